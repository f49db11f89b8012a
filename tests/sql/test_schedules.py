"""Schedules on each database: a tick sent once, ticks missed while no worker ran sent once or
skipped, and workers racing for the same tick."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Column, MetaData, String, Table, func, insert, select
from sqlalchemy.orm import Session

from busway import (
    CommandBus,
    Message,
    Messaging,
    SqlChannel,
    asynchronous,
    command_handler,
)
from busway.schedules import TICK, Schedule
from busway.testing import FakeClock

metadata = MetaData()
ticks = Table("test_schedule_ticks", metadata, Column("tick", String(100), primary_key=True))


@dataclass
class Pulse:
    pass


@asynchronous("pulses")
class Pulses(CommandBus):
    """Pulses wait on a channel for a worker."""


@command_handler
@asynchronous("pulses")
def record(command: Pulse, message: Message[Pulse], session: Session) -> None:
    session.execute(insert(ticks).values(tick=str(message.headers[TICK])))


def make(database_url: str, clock: FakeClock, **options: Any) -> Messaging:
    messaging = Messaging(
        handlers=[record],
        channels=[SqlChannel("pulses")],
        database=database_url,
        clock=clock,
        schedules=[Schedule("pulse", Pulse(), every=60, **options)],
    )
    with messaging.database_engine.begin() as connection:
        metadata.drop_all(connection)
        metadata.create_all(connection)
        connection.exec_driver_sql("DROP TABLE IF EXISTS busway_schedules")
    messaging.setup()
    return messaging


def recorded(messaging: Messaging) -> list[str]:
    messaging.run("pulses")
    with messaging.database_engine.connect() as connection:
        return sorted(connection.execute(select(ticks.c.tick)).scalars())


def fire(messaging: Messaging) -> Any:
    schedules = messaging._schedules
    assert schedules is not None
    return schedules.fire(schedules.schedules[0])


def test_a_tick_is_sent_once_and_a_new_schedule_waits_for_its_next(database_url: str) -> None:
    clock = FakeClock(1_800_000_030.0)
    messaging = make(database_url, clock)
    try:
        messaging._schedules.start(clock())  # type: ignore[union-attr]
        assert fire(messaging).sent == ()  # the tick of 1_800_000_000 was before it began
        clock.advance(30)  # 1_800_000_060: a tick
        assert fire(messaging).sent == (1_800_000_060.0,)
        assert fire(messaging).sent == ()  # once
        clock.advance(59)
        assert fire(messaging).sent == ()
        assert recorded(messaging) == ["pulse@2027-01-15T08:01:00+00:00"]
        [state] = messaging.schedules()
        assert (state.last_tick, state.next_tick) == (1_800_000_060.0, 1_800_000_120.0)
    finally:
        messaging.close()


@pytest.mark.parametrize("catch_up", [True, False], ids=["catch_up", "skip"])
def test_ticks_missed_while_no_worker_ran(database_url: str, catch_up: bool) -> None:
    clock = FakeClock(1_800_000_000.0)
    messaging = make(database_url, clock, catch_up=catch_up)
    try:
        messaging._schedules.start(clock())  # type: ignore[union-attr]
        clock.advance(10 * 60 + 2)  # ten ticks while every worker was down; the last 2 s ago
        firing = fire(messaging)
        # The last tick is within grace (5 s): it is on time, sent either way. The nine
        # before it were missed: sent once, as one message, or skipped.
        assert firing.missed == 9
        expected = [1_800_000_540.0, 1_800_000_600.0] if catch_up else [1_800_000_600.0]
        assert list(firing.sent) == expected
        clock.advance(60)
        assert fire(messaging).sent == (1_800_000_660.0,)
        assert len(recorded(messaging)) == len(expected) + 1
    finally:
        messaging.close()


def race(messaging: Messaging, start: threading.Barrier, results: list[Any]) -> None:
    start.wait()
    try:
        results.append(fire(messaging).sent)
    except Exception as error:  # a lost race on SQLite: locked, nothing sent
        results.append(error)


def test_workers_racing_for_a_tick_send_it_once(database_url: str) -> None:
    clock = FakeClock(1_800_000_000.0)
    workers = [make(database_url, clock) for _ in range(4)]
    try:
        workers[0]._schedules.start(clock())  # type: ignore[union-attr]
        for tick in range(10):
            clock.advance(60)
            start = threading.Barrier(len(workers))
            results: list[Any] = []
            threads = [threading.Thread(target=race, args=(w, start, results)) for w in workers]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            sent = [r for r in results if isinstance(r, tuple) and r]
            assert sent == [(1_800_000_000.0 + 60 * (tick + 1),)], results
        with workers[0].database_engine.connect() as connection:
            assert connection.execute(select(func.count()).select_from(ticks)).scalar() == 0
        assert len(recorded(workers[0])) == 10
    finally:
        for messaging in workers:
            messaging.close()


APP = """
from dataclasses import dataclass

from busway import Messaging, command_handler
from busway.schedules import Schedule


@dataclass
class Report:
    pass


@command_handler
def report(command: Report) -> None:
    pass


messaging = Messaging(
    handlers=[report],
    database="sqlite:///DATABASE",
    schedules=[
        Schedule("hourly", Report(), every=3600),
        Schedule("nightly", Report(), cron="30 2 * * *", zone="Europe/Paris"),
    ],
)
"""


def test_busway_schedules_lists_last_and_next_ticks(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from busway.cli import cli

    (tmp_path / "reports.py").write_text(APP.replace("DATABASE", str(tmp_path / "app.db")))
    monkeypatch.syspath_prepend(str(tmp_path))
    result = CliRunner().invoke(cli, ["schedules", "--app", "reports:messaging"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["NAME", "LAST", "TICK", "FIRED", "AT", "NEXT", "TICK"]
    hourly = next(line for line in lines if line.startswith("hourly"))
    nightly = next(line for line in lines if line.startswith("nightly"))
    assert hourly.split()[1:3] == ["-", "-"]  # never fired: no worker ran yet
    assert hourly.split()[3].endswith(":00:00+00:00")
    assert "T02:30:00+0" in nightly.split()[3] or "T03:00:00+02:00" in nightly.split()[3]
