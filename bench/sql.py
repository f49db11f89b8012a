"""SQL channels on PostgreSQL and SQLite, each against the raw driver doing the same work.

- outbox cost: a command whose handler inserts a business row through its Session and
  publishes one event through an outbox bus, against the same business transaction done with
  SQLAlchemy alone and with the raw driver, and no event;
- drain: a backlog consumed by one worker with a no-op handler, against a raw loop that claims
  100 rows with ``FOR UPDATE SKIP LOCKED`` (the write lock on SQLite), decodes each body, calls
  the handler and deletes them in one transaction;
- deep backlog (PostgreSQL): the drain rate of the first messages of a big backlog against the
  rate on a small one (``BENCH_BACKLOG``, default 1,000,000 rows);
- fresh install (PostgreSQL): a drain in a database whose tables were just created, never
  analyzed, autovacuum off for the inbox, against the same drain after ``ANALYZE``;
- latency (PostgreSQL): send to handler at 200 msg/s, p50 and p99, against a raw
  INSERT + NOTIFY / LISTEN + claim loop.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy import Column, Integer, MetaData, String, Table, insert
from sqlalchemy.orm import Session

from bench import Result
from bench.timing import QUICK, Latencies, latency_results, paced, paced_through
from busway import CommandBus, EventBus, Messaging, SqlChannel, asynchronous, command_handler
from busway.handlers import Kind

POSTGRES = os.environ.get("BENCH_POSTGRESQL_URL", "postgresql://postgres@127.0.0.1/test")
DRAIN = 2_000 if QUICK else 20_000
BACKLOG = int(os.environ.get("BENCH_BACKLOG", "50000" if QUICK else "1000000"))
OUTBOX = 300 if QUICK else 2_000


@dataclass
class Job:
    number: int


@dataclass
class PlaceOrder:
    number: int


@dataclass
class OrderWasPlaced:
    number: int


@asynchronous("jobs")
class JobBus(CommandBus):
    pass


@asynchronous("outbox")
class OutboxEventBus(EventBus):
    pass


metadata = MetaData()
orders = Table(
    "bench_orders",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("product", String(50)),
)

handled: list[float] = []


@command_handler
def work(job: Job) -> None:
    handled.append(job.number)


@command_handler
def place_order(command: PlaceOrder, events: OutboxEventBus, session: Session) -> None:
    session.execute(insert(orders).values(id=command.number, product="book"))
    events.publish(OrderWasPlaced(command.number))


def benchmarks() -> list[Result]:
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as folder:
        sqlite_url = f"sqlite:///{Path(folder) / 'bench.db'}"
        results += outbox_cost("SQLite", sqlite_url)
        results.append(drain("SQLite", sqlite_url, DRAIN))
        results.append(drain("SQLite", sqlite_url, DRAIN, redo_batches=True))
    if not _reachable(POSTGRES):
        print(f"sql: PostgreSQL at {POSTGRES} is unreachable; its figures are skipped")
        return results
    results += outbox_cost("PostgreSQL", POSTGRES)
    results.append(drain("PostgreSQL", POSTGRES, DRAIN))
    results.append(drain("PostgreSQL", POSTGRES, DRAIN, redo_batches=True))
    results.append(deep_backlog(POSTGRES))
    results.append(fresh_install(POSTGRES))
    results += latency(POSTGRES)
    return results


def _reachable(url: str) -> bool:
    import psycopg

    try:
        psycopg.connect(_conninfo(url), connect_timeout=3).close()
    except psycopg.Error:
        return False
    return True


def _conninfo(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _messaging(url: str, redo_batches: bool = False) -> Messaging:
    messaging = Messaging(
        handlers=[work, place_order],
        channels=[SqlChannel("jobs", redo_batches=redo_batches), SqlChannel("outbox")],
        database=url,
    )
    messaging.setup()
    with messaging.database_engine.begin() as connection:
        metadata.drop_all(connection)
        metadata.create_all(connection)
        connection.exec_driver_sql("DELETE FROM busway_messages")
    # The inbox keeps its records, as it does in production until `busway inbox cleanup`: an
    # inbox emptied here would be analyzed as empty and then read by full scans as it grows.
    return messaging


@contextmanager
def raw_connection(url: str) -> Iterator[Any]:
    if url.startswith("sqlite"):
        connection = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            yield connection
        finally:
            connection.close()
    else:
        import psycopg

        with psycopg.connect(_conninfo(url)) as connection:
            yield connection


def _raw_transaction(connection: Any, statements: Callable[[], None]) -> None:
    if isinstance(connection, sqlite3.Connection):
        connection.execute("BEGIN IMMEDIATE")
        statements()
        connection.execute("COMMIT")
    else:
        with connection.transaction():
            statements()


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds else float("nan")


# -- outbox cost ---------------------------------------------------------------------------


def outbox_cost(label: str, url: str) -> list[Result]:
    messaging = _messaging(url)
    engine = messaging.database_engine
    bus = messaging.command_bus

    def clear() -> None:
        with engine.begin() as connection:
            connection.execute(orders.delete())
            connection.exec_driver_sql("DELETE FROM busway_messages")

    def with_busway(offset: int) -> float:
        start = time.perf_counter()
        for number in range(offset, offset + OUTBOX):
            bus.send(PlaceOrder(number))
        return _rate(OUTBOX, time.perf_counter() - start)

    def with_sqlalchemy(offset: int) -> float:
        start = time.perf_counter()
        for number in range(offset, offset + OUTBOX):
            with Session(engine) as session, session.begin():
                session.execute(insert(orders).values(id=number, product="book"))
        return _rate(OUTBOX, time.perf_counter() - start)

    def with_driver(offset: int) -> float:
        sql = "INSERT INTO bench_orders (id, product) VALUES ({0}, {0})".format(
            "?" if url.startswith("sqlite") else "%s"
        )
        with raw_connection(url) as connection:
            start = time.perf_counter()
            for number in range(offset, offset + OUTBOX):
                _raw_transaction(
                    connection,
                    lambda number=number: connection.execute(sql, (number, "book")),  # type: ignore[misc]
                )
            return _rate(OUTBOX, time.perf_counter() - start)

    best = {"busway": 0.0, "sqlalchemy": 0.0, "driver": 0.0}
    runs = 2 if QUICK else 3
    for run in range(runs):
        clear()
        offset = run * OUTBOX * 3
        best["busway"] = max(best["busway"], with_busway(offset))
        best["sqlalchemy"] = max(best["sqlalchemy"], with_sqlalchemy(offset + OUTBOX))
        best["driver"] = max(best["driver"], with_driver(offset + 2 * OUTBOX))
    messaging.close()
    name = f"{label}: command + business row + outbox event"
    return [
        Result(
            name,
            best["busway"],
            "msg/s",
            "same SQLAlchemy transaction, no event",
            best["sqlalchemy"],
        ),
        Result(name, best["busway"], "msg/s", "raw driver, business row only", best["driver"]),
    ]


# -- draining ------------------------------------------------------------------------------


def _vacuum(url: str) -> None:
    """Clear the rows earlier runs deleted and refresh the planner's statistics, as autovacuum
    would (it may be off on a test server): a queue table's dead rows slow down every claim,
    busway's and the raw loop's, and an inbox never analyzed is read by a full scan."""
    if url.startswith("sqlite"):
        return
    import psycopg

    with psycopg.connect(_conninfo(url), autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE busway_messages")
        connection.execute("VACUUM ANALYZE busway_inbox")


def _fill(messaging: Messaging, count: int, vacuum: bool = True) -> None:
    """Put ``count`` valid messages for ``work`` on channel ``jobs``, in bulk; vacuumed and
    analyzed first unless ``vacuum`` is false."""
    if vacuum:
        _vacuum(str(messaging.database_engine.url.render_as_string(hide_password=False)))
    channel = messaging.channel("jobs")
    assert isinstance(channel, SqlChannel)
    runtime = messaging.runtime
    with messaging.database_engine.begin() as connection:
        for start in range(0, count, 10_000):
            rows = [
                channel._row(
                    runtime.envelope(
                        runtime.new_message(Kind.COMMAND, Job(number), None, None, None), {}
                    )
                )
                for number in range(start, min(count, start + 10_000))
            ]
            connection.execute(insert(channel.table), rows)


def _drain_busway(messaging: Messaging, count: int) -> float:
    handled.clear()
    start = time.perf_counter()
    messaging.run("jobs", limit=count)
    seconds = time.perf_counter() - start
    assert len(handled) == count, f"busway handled {len(handled)} of {count}"
    return _rate(count, seconds)


def _drain_raw(url: str, count: int) -> float:
    decode = msgspec.json.Decoder(Job).decode
    done: list[int] = []

    def call(job: Job) -> None:
        done.append(job.number)

    sqlite = url.startswith("sqlite")
    claim = (
        "SELECT seq, body FROM busway_messages WHERE channel = {p} AND available_at <= {p} "
        "ORDER BY available_at, seq LIMIT 100" + ("" if sqlite else " FOR UPDATE SKIP LOCKED")
    ).format(p="?" if sqlite else "%s")
    with raw_connection(url) as connection:
        start = time.perf_counter()
        while len(done) < count:
            now = int(time.time() * 1000)
            if sqlite:
                connection.execute("BEGIN IMMEDIATE")
                rows = connection.execute(claim, ("jobs", now)).fetchall()
                for _seq, body in rows:
                    call(decode(body))
                connection.execute(
                    f"DELETE FROM busway_messages WHERE seq IN ({','.join('?' * len(rows))})",
                    [seq for seq, _ in rows],
                )
                connection.execute("COMMIT")
            else:
                with connection.transaction():
                    rows = connection.execute(claim, ("jobs", now)).fetchall()
                    for _seq, body in rows:
                        call(decode(body))
                    connection.execute(
                        "DELETE FROM busway_messages WHERE seq = ANY(%s)", ([s for s, _ in rows],)
                    )
            if not rows:
                break
        seconds = time.perf_counter() - start
    assert len(done) == count, f"the raw loop handled {len(done)} of {count}"
    return _rate(count, seconds)


def drain(label: str, url: str, count: int, redo_batches: bool = False) -> Result:
    messaging = _messaging(url, redo_batches)
    best_busway = best_raw = 0.0
    for _ in range(1 if QUICK else 2):
        _fill(messaging, count)
        best_busway = max(best_busway, _drain_busway(messaging, count))
        _fill(messaging, count)
        best_raw = max(best_raw, _drain_raw(url, count))
    messaging.close()
    mode = "redo_batches" if redo_batches else "default mode"
    return Result(
        f"{label}: drain {count:,} messages, one worker, no-op handler, {mode}",
        best_busway,
        "msg/s",
        "raw claim 100 + decode + call + delete loop",
        best_raw,
    )


def deep_backlog(url: str) -> Result:
    messaging = _messaging(url, redo_batches=True)
    _fill(messaging, DRAIN)
    shallow = _drain_busway(messaging, DRAIN)
    _fill(messaging, BACKLOG)
    deep = _drain_busway(messaging, DRAIN)
    with messaging.database_engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM busway_messages")
    messaging.close()
    return Result(
        f"PostgreSQL: drain the first {DRAIN:,} of a {BACKLOG:,}-message backlog",
        deep,
        "msg/s",
        f"drain a {DRAIN:,}-message backlog",
        shallow,
    )


FRESH_DATABASE = "busway_bench_fresh"


@contextmanager
def _fresh_database(url: str) -> Iterator[str]:
    """The URL of a database made for the block on the server of ``url``, dropped after."""
    import psycopg
    from sqlalchemy.engine import make_url

    def run(statement: str) -> None:
        with psycopg.connect(_conninfo(url), autocommit=True) as connection:
            connection.execute(statement)

    run(f"DROP DATABASE IF EXISTS {FRESH_DATABASE} WITH (FORCE)")
    run(f"CREATE DATABASE {FRESH_DATABASE}")
    try:
        yield make_url(url).set(database=FRESH_DATABASE).render_as_string(hide_password=False)
    finally:
        run(f"DROP DATABASE IF EXISTS {FRESH_DATABASE} WITH (FORCE)")


def fresh_install(url: str) -> Result:
    """A first drain where the planner knows nothing of busway's tables: just created, the
    inbox growing from empty with autovacuum off for it (so never analyzed), against the
    same drain once ``ANALYZE`` has run."""
    import psycopg

    best_fresh = best_analyzed = 0.0
    for _ in range(1 if QUICK else 2):
        with _fresh_database(url) as fresh_url:
            messaging = _messaging(fresh_url)
            with psycopg.connect(_conninfo(fresh_url), autocommit=True) as connection:
                connection.execute("ALTER TABLE busway_inbox SET (autovacuum_enabled = false)")
            _fill(messaging, DRAIN, vacuum=False)
            best_fresh = max(best_fresh, _drain_busway(messaging, DRAIN))
            _fill(messaging, DRAIN)  # vacuumed and analyzed first
            best_analyzed = max(best_analyzed, _drain_busway(messaging, DRAIN))
            messaging.close()
    return Result(
        f"PostgreSQL: drain {DRAIN:,} messages on a fresh install, never analyzed, "
        "inbox autovacuum off",
        best_fresh,
        "msg/s",
        "the same drain after ANALYZE",
        best_analyzed,
    )


# -- latency -------------------------------------------------------------------------------

latencies = Latencies()


@command_handler
def timed_job(job: Job) -> None:
    latencies.handled(job.number)


def latency(url: str) -> list[Result]:
    messaging = Messaging(handlers=[timed_job], channels=[SqlChannel("jobs")], database=url)
    messaging.setup()
    with messaging.database_engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM busway_messages")
    _vacuum(url)
    bus = messaging.gateway(JobBus)
    worker = messaging.worker("jobs", until_empty=False, poll_interval=1.0)
    try:
        paced_through(worker, lambda number: bus.send(Job(number)), latencies)
    finally:
        messaging.close()
    busway = latencies.percentiles()
    _vacuum(url)
    return latency_results(
        "PostgreSQL", busway, "raw INSERT+NOTIFY / LISTEN+claim", _raw_latencies(url)
    )


def _raw_latencies(url: str) -> tuple[float, float]:
    import psycopg

    raw = Latencies()
    stop = threading.Event()
    listening = threading.Event()
    claim = (
        "DELETE FROM busway_messages WHERE seq IN (SELECT seq FROM busway_messages "
        "WHERE channel = 'raw' ORDER BY available_at, seq LIMIT 100 FOR UPDATE SKIP LOCKED) "
        "RETURNING body"
    )

    def consume() -> None:
        with (
            psycopg.connect(_conninfo(url), autocommit=True) as listener,
            psycopg.connect(_conninfo(url)) as connection,
        ):
            listener.execute("LISTEN busway_messages")
            listening.set()
            while not stop.is_set():
                for _ in listener.notifies(timeout=0.1, stop_after=1):
                    break
                with connection.transaction():
                    for (body,) in connection.execute(claim).fetchall():
                        raw.handled(int(body))

    thread = threading.Thread(target=consume)
    thread.start()
    listening.wait()
    try:
        with psycopg.connect(_conninfo(url), autocommit=True) as producer:

            def send(number: int) -> None:
                producer.execute(
                    "INSERT INTO busway_messages (channel, available_at, queued_at, message_id, "
                    "headers, body, deliveries) VALUES ('raw', 0, 0, %s, '{}', %s, 0)",
                    (str(number), str(number).encode()),
                )

            paced(send, raw)
    finally:
        stop.set()
        thread.join()
    return raw.percentiles()
