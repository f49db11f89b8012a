"""A one-second schedule with two, and with five, worker processes running for a minute: each
tick is sent, and handled, exactly once."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import schedule_worker
from sqlalchemy import create_engine, select

from dbsupport import create_tables, sync_url

HERE = Path(__file__).parent
PYTHON = (sys.executable, "-c", "import schedule_worker; schedule_worker.main()")
SECONDS = float(os.environ.get("BUSWAY_TEST_SCHEDULE_SECONDS", "60"))


def start(url: str, schedule: str) -> subprocess.Popen[str]:
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), *sys.path]))
    return subprocess.Popen(
        [*PYTHON, url, schedule, str(SECONDS)],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_every_tick_once_with_two_and_with_five_workers(database_url: str) -> None:
    create_tables(database_url, schedule_worker.metadata)
    engine = create_engine(sync_url(database_url))
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE IF EXISTS busway_schedules")
    schedule_worker.build(database_url, "two").setup()

    workers = {"two": 2, "five": 5}
    processes = [
        start(database_url, schedule) for schedule, count in workers.items() for _ in range(count)
    ]
    for process in processes:
        _, errors = process.communicate(timeout=SECONDS + 120)
        assert process.returncode == 0, errors

    for schedule in workers:
        leftover = schedule_worker.build(database_url, schedule)
        try:
            leftover.run(f"beats-{schedule}")  # what was sent as the workers stopped
            assert leftover.dead_letters.list() == []  # a tick handled twice would be here
        finally:
            leftover.close()
        with engine.connect() as connection:
            rows = connection.execute(
                select(schedule_worker.ticks.c.tick).where(
                    schedule_worker.ticks.c.schedule == schedule
                )
            ).scalars()
            moments = sorted(datetime.fromisoformat(tick.split("@", 1)[1]) for tick in rows)
        assert len(moments) >= SECONDS * 0.8, f"{schedule}: only {len(moments)} ticks"
        steps = {(b - a).total_seconds() for a, b in itertools.pairwise(moments)}
        assert steps == {1.0}, f"{schedule}: ticks missed or repeated: {sorted(steps)}"
    engine.dispose()
