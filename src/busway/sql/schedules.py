"""Firing recurring messages exactly once per tick, however many workers run.

Each schedule has a row in ``busway_schedules`` holding its last tick. A worker that finds
ticks due moves the row on with a compare-and-set (``UPDATE ... WHERE last_tick = <what it
read>``) and sends the ticks' messages in the same transaction: when the messages go to a
``SqlChannel`` of this database (an outbox relayed to a broker, say), the row and the messages
commit together, so a tick is sent once or, if the worker dies first, by the next worker.
Another worker's update of the same row waits for the first to commit and then matches no
row: it sends nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Column, MetaData, String, Table, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from busway.schedules import Schedule
from busway.sql.creating import create_table, has_table, set_up
from busway.sql.database import Database

log = logging.getLogger("busway.schedules")

MAX_TICKS = 1000
"""At most this many ticks are looked at in one firing; older ones count as missed."""
RETRY_AFTER = 1.0
"""Seconds before a firing that failed (the database away) is tried again."""


def schedules_table(metadata: MetaData, name: str = "busway_schedules") -> Table:
    """One row per schedule: its last tick and when it was fired, in milliseconds."""
    return Table(
        name,
        metadata,
        Column("name", String(200), primary_key=True),
        Column("last_tick", BigInteger, nullable=False),
        Column("fired_at", BigInteger, nullable=False),
    )


def setup_schedules(database: Database, table: Table | None = None) -> None:
    """Create the schedules' table, unless it is there."""
    table = schedules_table(MetaData()) if table is None else table
    set_up(database, has_table(table), create_table(table))


@dataclass(frozen=True, slots=True)
class Firing:
    """What one look at a schedule decided."""

    sent: tuple[float, ...]
    """The ticks sent, oldest first."""
    missed: int = 0
    """Ticks that came due while no worker ran, beyond ``grace``."""


@dataclass(frozen=True, slots=True)
class ScheduleState:
    name: str
    last_tick: float | None
    next_tick: float
    fired_at: float | None


class Schedules:
    """The schedules of one database, and their firing.

    ``transaction`` opens the transaction the sends join (``Messaging.transaction``); ``send``
    sends a schedule's message for a tick inside it.
    """

    def __init__(
        self,
        database: Database,
        schedules: Sequence[Schedule],
        transaction: Callable[[], AbstractContextManager[Session]],
        send: Callable[[Schedule, float], None],
        clock: Callable[[], float],
    ) -> None:
        self.database = database
        self.schedules = tuple(schedules)
        self.table = schedules_table(MetaData())
        self._transaction = transaction
        self._send = send
        self._clock = clock

    def setup(self) -> None:
        setup_schedules(self.database, self.table)

    def start(self, now: float) -> None:
        """Give each schedule without a row one, its last tick the latest due by ``now``: a
        new schedule fires from its next tick on."""
        for schedule in self.schedules:
            try:
                with self.database.engine.begin() as connection:
                    found = connection.execute(
                        select(self.table.c.name).where(self.table.c.name == schedule.name)
                    ).first()
                    if found is None:
                        connection.execute(
                            insert(self.table).values(
                                name=schedule.name,
                                last_tick=_ms(schedule.latest_due(now)),
                                fired_at=_ms(now),
                            )
                        )
            except IntegrityError:  # another worker made it first
                pass

    def fire_due(self) -> dict[str, Firing]:
        """Send every tick that is due; what each schedule did."""
        return {schedule.name: self.fire(schedule) for schedule in self.schedules}

    def fire(self, schedule: Schedule) -> Firing:
        now = self._clock()
        table = self.table
        with self._transaction() as session:
            connection = session.connection()
            last_ms = connection.execute(
                select(table.c.last_tick).where(table.c.name == schedule.name)
            ).scalar()
            if last_ms is None:
                return Firing(())
            due = _due(schedule, last_ms / 1000, now)
            if not due:
                return Firing(())
            recent = [tick for tick in due if now - tick <= schedule.grace]
            old = [tick for tick in due if now - tick > schedule.grace]
            if len(due) == MAX_TICKS:  # there may be more behind: at least these are old
                old, recent = due, []
            missed = len(old)
            sent = ([old[-1]] if old and schedule.catch_up else []) + recent
            moved = connection.execute(
                update(table)
                .where(table.c.name == schedule.name, table.c.last_tick == last_ms)
                .values(last_tick=_ms(due[-1]), fired_at=_ms(now))
            )
            if moved.rowcount != 1:  # another worker fired these ticks
                return Firing(())
            for tick in sent:
                self._send(schedule, tick)
        if missed:
            if schedule.catch_up:
                log.warning(
                    "schedule %r: %d tick(s) came due while no worker ran; sent once, for %s",
                    schedule.name,
                    missed,
                    schedule.local(old[-1]).isoformat(),
                    extra={"schedule": schedule.name, "missed": missed},
                )
            else:
                log.warning(
                    "schedule %r: skipped %d tick(s) that came due while no worker ran",
                    schedule.name,
                    missed,
                    extra={"schedule": schedule.name, "missed": missed},
                )
        return Firing(tuple(sent), missed)

    def states(self) -> list[ScheduleState]:
        """Each schedule's last and next tick, for ``busway schedules``."""
        with self.database.engine.connect() as connection:
            rows = {
                row.name: row
                for row in connection.execute(
                    select(self.table.c.name, self.table.c.last_tick, self.table.c.fired_at)
                )
            }
        now = self._clock()
        states = []
        for schedule in self.schedules:
            row = rows.get(schedule.name)
            last = None if row is None else row.last_tick / 1000
            states.append(
                ScheduleState(
                    schedule.name,
                    last,
                    schedule.next_after(now if last is None else max(last, now)),
                    None if row is None else row.fired_at / 1000,
                )
            )
        return states

    def now(self) -> float:
        return self._clock()

    def next_wake(self) -> float:
        now = self._clock()
        return min(schedule.next_after(now) for schedule in self.schedules)


class Scheduler:
    """Fires a database's schedules from a thread of its own while a worker runs."""

    def __init__(self, schedules: Schedules) -> None:
        self._schedules = schedules
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="busway-scheduler", daemon=True)

    def __enter__(self) -> Scheduler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        schedules = self._schedules
        started = False
        while not self._stop.is_set():
            try:
                if not started:
                    schedules.start(schedules.now())
                    started = True
                schedules.fire_due()
                pause = schedules.next_wake() - schedules.now()
            except Exception as error:  # the database away: say so, try again soon
                log.warning("schedules could not fire: %s: %s", type(error).__name__, error)
                pause = RETRY_AFTER
            self._stop.wait(max(0.0, pause) + 0.001)


def _due(schedule: Schedule, last: float, now: float) -> list[float]:
    ticks: list[float] = []
    tick = schedule.next_after(last)
    while tick <= now and len(ticks) < MAX_TICKS:
        ticks.append(tick)
        tick = schedule.next_after(tick)
    if len(ticks) == MAX_TICKS:
        ticks[-1] = schedule.latest_due(now)
    return ticks


def _ms(seconds: float) -> int:
    return round(seconds * 1000)
