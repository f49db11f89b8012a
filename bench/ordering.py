"""Ordering keys on SQL channels: what keeping each key's messages in order costs a drain.

A backlog of 200 ordering keys (message ``n`` under key ``n % 200``) is drained with a no-op
handler, against the same backlog without keys: on SQLite by one worker (its one write lock
serializes threads), on PostgreSQL and MariaDB by one worker and by one of four threads. The
backlogs are written in bulk, as the rows the channel writes for each send; only the drains
are timed. On PostgreSQL the table is vacuumed and analyzed empty before each fill, so that
the planner's statistics say it is empty when the drain begins, as on a fresh install: the
claims must not depend on them.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert
from sqlalchemy.exc import DBAPIError

from bench import Result
from bench.sql import (
    DRAIN,
    POSTGRES,
    Job,
    _messaging,
    _rate,
    _reachable,
    _vacuum,
    handled,
)
from bench.timing import QUICK
from busway import Messaging, SqlChannel
from busway.handlers import Kind
from busway.message import ORDERING_KEY

MARIADB = os.environ.get("BENCH_MARIADB_URL", "mysql+pymysql://root@127.0.0.1/test")
KEYS = 200
ROWS_PER_INSERT = 10_000
ROUNDS = 1 if QUICK else 3


def benchmarks() -> list[Result]:
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as folder:
        sqlite_url = f"sqlite:///{Path(folder) / 'bench.db'}"
        results.append(ordered_drain("SQLite", sqlite_url, DRAIN, 1))
    if _reachable(POSTGRES):
        results += [ordered_drain("PostgreSQL", POSTGRES, DRAIN, threads) for threads in (1, 4)]
    else:
        print(f"ordering: PostgreSQL at {POSTGRES} is unreachable; its figures are skipped")
    if _reachable_by_sqlalchemy(MARIADB):
        results += [ordered_drain("MariaDB", MARIADB, DRAIN, threads) for threads in (1, 4)]
    else:
        print(f"ordering: MariaDB at {MARIADB} is unreachable; its figures are skipped")
    return results


def _reachable_by_sqlalchemy(url: str) -> bool:
    engine = create_engine(url, pool_pre_ping=True)
    try:
        with engine.connect():
            return True
    except DBAPIError:
        return False
    finally:
        engine.dispose()


def _fill(messaging: Messaging, url: str, count: int, keys: int | None) -> None:
    """``count`` jobs on channel ``jobs``, under ``keys`` ordering keys (None: no key), in
    bulk, after a vacuum."""
    if url.startswith("postgresql"):
        _vacuum(url)
    channel = messaging.channel("jobs")
    assert isinstance(channel, SqlChannel)
    runtime = messaging.runtime

    def row(number: int) -> dict[str, Any]:
        message = runtime.new_message(Kind.COMMAND, Job(number), None, None, None)
        key = {} if keys is None else {ORDERING_KEY: str(number % keys)}
        return channel._row(runtime.envelope(message, key))

    with messaging.database_engine.begin() as connection:
        for start in range(0, count, ROWS_PER_INSERT):
            numbers = range(start, min(count, start + ROWS_PER_INSERT))
            connection.execute(insert(channel.table), [row(number) for number in numbers])


def _drain(messaging: Messaging, count: int, threads: int) -> float:
    handled.clear()
    start = time.perf_counter()
    messaging.run("jobs", limit=count, concurrency=threads)
    seconds = time.perf_counter() - start
    assert len(handled) == count, f"busway handled {len(handled)} of {count}"
    return _rate(count, seconds)


def ordered_drain(label: str, url: str, count: int, threads: int) -> Result:
    messaging = _messaging(url)
    best_ordered = best_unordered = 0.0
    for _ in range(ROUNDS):
        _fill(messaging, url, count, None)
        best_unordered = max(best_unordered, _drain(messaging, count, threads))
        _fill(messaging, url, count, KEYS)
        best_ordered = max(best_ordered, _drain(messaging, count, threads))
    messaging.close()
    worker = "one worker" if threads == 1 else f"one worker of {threads} threads"
    return Result(
        f"{label}: ordered drain, {KEYS} keys, {count:,} messages, {worker}, no-op handler",
        best_ordered,
        "msg/s",
        "unordered drain, same backlog without keys",
        best_unordered,
    )
