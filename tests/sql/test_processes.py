"""Real worker processes on one channel: sharing a backlog, and being killed mid-handler."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sql_worker
from sqlalchemy import create_engine, func, select

from dbsupport import create_tables, sync_url
from markers import write_atomically

HERE = Path(__file__).parent


@pytest.fixture
def backlog(database_url):
    """Send ``count`` Record commands to the ``work`` channel, in one transaction."""
    create_tables(database_url, sql_worker.metadata)
    messaging = sql_worker.build(database_url)
    messaging.setup()

    def send(count):
        bus = messaging.gateway(sql_worker.WorkBus)
        with messaging.transaction():
            for index in range(count):
                bus.send(sql_worker.Record(index))
        assert messaging.channel("work").depth() == count

    yield send
    messaging.close()


def start_worker(url, name, *options):
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), *sys.path]))
    return subprocess.Popen(
        [sys.executable, "-c", "import sql_worker; sql_worker.main()", url, name, *options],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process, timeout=90):
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def wait_until(condition, what, processes=(), timeout=60):
    """Poll an external process's progress; fail if it dies or the deadline passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        for process in processes:
            if process.poll() is not None:
                _, err = process.communicate()
                pytest.fail(f"worker exited ({process.returncode}) before {what}:\n{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def state(url):
    """Handled ids, the number of handled rows, counters by worker, and messages left."""
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            ids = connection.execute(select(sql_worker.handled.c.id)).scalars().all()
            rows = connection.execute(
                select(func.count()).select_from(sql_worker.handled)
            ).scalar_one()
            counters = dict(
                connection.execute(
                    select(sql_worker.counters.c.worker, sql_worker.counters.c.n)
                ).all()
            )
            left = connection.execute(
                select(func.count()).select_from(sql_worker.build(url).channel("work").table)
            ).scalar_one()
    finally:
        engine.dispose()
    return sorted(ids), rows, counters, left


def dead_letters(url):
    messaging = sql_worker.build(url)
    try:
        return messaging.dead_letters.list()
    finally:
        messaging.close()


def test_two_worker_processes_handle_each_message_once(database_url, backlog, tmp_path):
    total = 2000
    backlog(total)
    go = tmp_path / "go"
    ready = [tmp_path / "ready-1", tmp_path / "ready-2"]
    workers = [
        start_worker(database_url, f"w{index}", "--ready", str(ready[index - 1]), "--go", str(go))
        for index in (1, 2)
    ]
    try:
        wait_until(lambda: all(path.exists() for path in ready), "both workers are ready", workers)
        write_atomically(go, "go")  # both start consuming at the same moment
        results = [finish(worker) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.communicate(timeout=30)

    ids, rows, counters, left = state(database_url)
    assert rows == total
    assert ids == list(range(total))  # each id once: the primary key allows no more
    assert sum(counters.values()) == total  # and each handler's effect counted once
    assert counters["w1"] > 0 and counters["w2"] > 0, counters
    assert left == 0
    assert dead_letters(database_url) == []
    assert all(result["failed"] == 0 for result in results)


def test_workers_killed_mid_handler_lose_nothing_and_repeat_nothing(
    database_url, backlog, tmp_path
):
    total, batch, block_at, kills = 30, 5, 7, 3
    backlog(total)
    in_flight = []

    for attempt in range(kills):
        marker = tmp_path / f"marker-{attempt}"
        worker = start_worker(
            database_url,
            f"killed-{attempt}",
            "--batch-size",
            str(batch),
            "--block-at",
            str(block_at),
            "--marker",
            str(marker),
        )
        try:
            wait_until(marker.exists, "the handler is mid-message", [worker])
        finally:
            os.kill(worker.pid, signal.SIGKILL)
            worker.communicate(timeout=30)
        assert worker.returncode == -signal.SIGKILL
        in_flight.append(int(marker.read_text()))
        ids, _, counters, left = state(database_url)
        # The first batch committed; the one in hand, with its written row, did not.
        assert counters[f"killed-{attempt}"] == batch
        assert in_flight[-1] not in ids
        assert left == total - batch * (attempt + 1)

    finish(start_worker(database_url, "final", "--batch-size", str(batch)))

    ids, rows, counters, left = state(database_url)
    assert ids == list(range(total))
    assert rows == total
    assert counters["final"] == total - batch * kills
    assert sum(counters.values()) == total
    assert set(in_flight) <= set(ids)
    assert left == 0
    assert dead_letters(database_url) == []
