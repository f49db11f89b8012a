"""A transaction the database ends, or a connection it drops, under a handler of a batch.

A deadlock victim on MariaDB, a killed connection anywhere, an interrupted statement on
SQLite: the database undoes the whole batch transaction, not the handler's savepoint. Every
test here sends five commands, claimed in one batch, and strikes the third one's handler on
its first run; the oracle is the business table: each command's effect exactly once,
nothing left on the channel, no dead letter. Each runs with the sync and the asyncio
worker, with savepoints per handler and with ``redo_batches=True``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    insert,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Session

from busway import CommandBus, RetryPolicy, SqlChannel, asynchronous, command_handler
from busway.sql.redo import MAX_LOST
from busway.sql.transactions import current_transaction
from dbsupport import create_tables, sync_url

VICTIM = 2
JOBS = 5
WAIT = 30.0
"""The longest any step waits for another connection: a failure, not a pace."""

metadata = MetaData()
effects = Table(
    "lost_effects",
    metadata,
    Column("n", Integer, primary_key=True, autoincrement=True),
    Column("job", Integer, nullable=False),
)
locks = Table(
    "lost_locks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("v", Integer, nullable=False),
)
ballast = Table(
    "lost_ballast",
    metadata,
    Column("n", Integer, primary_key=True, autoincrement=True),
    Column("pad", String(50), nullable=False),
)


@dataclass
class Job:
    n: int


@asynchronous("jobs")
class JobBus(CommandBus):
    pass


def backend_of(url: str) -> str:
    return make_url(url).get_backend_name()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine of the test's own, for the connection that competes with the worker."""
    create_tables(database_url, metadata)
    engine = create_engine(sync_url(database_url), isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(insert(locks), [{"id": 1, "v": 0}, {"id": 2, "v": 0}])
    yield engine
    engine.dispose()


def effect_counts(engine: Engine) -> dict[int, int]:
    with engine.connect() as connection:
        jobs = connection.execute(select(effects.c.job)).scalars().all()
    return dict(sorted(Counter(jobs).items()))


# -- faults: what a handler's first run of the victim does -----------------------------------
#
# A fault's ``strike`` is a generator of SQL statements for the handler to run through its
# Session, sync or asyncio, each one's result sent back (its error thrown in); what it waits
# for in between is the other connection.

Strike = Generator[str, Any, None]


class Fault:
    def start(self) -> None:
        """Before the worker runs."""

    def strike(self) -> Strike:
        raise NotImplementedError
        yield ""

    def finish(self) -> None:
        """After the worker ran: the other connection did what the fault needs."""


class OtherConnection:
    """A transaction on another connection, run in a thread by ``script``."""

    def __init__(self, engine: Engine, script: Callable[[Any], None]) -> None:
        self.engine = engine
        self.script = script
        self.backend_id: int | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        try:
            with self.engine.connect() as connection:
                self.backend_id = connection.execute(text(backend_id_query(self.engine))).scalar()
                connection.exec_driver_sql("BEGIN")
                self.script(connection)
                connection.exec_driver_sql("COMMIT")
        except BaseException as error:  # reported by join
            self.error = error

    def join(self) -> None:
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the other connection never finished"
        assert self.error is None, f"the other connection failed: {self.error!r}"

    def wait_until_blocked(self) -> None:
        """Until the other connection's statement waits for a lock the handler holds."""
        if self.engine.dialect.name == "postgresql":
            query = "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = :id"
        else:
            query = (
                "SELECT trx_state = 'LOCK WAIT' FROM information_schema.innodb_trx "
                "WHERE trx_mysql_thread_id = :id"
            )
        deadline = time.monotonic() + WAIT
        with self.engine.connect() as monitor:
            while not monitor.execute(text(query), {"id": self.backend_id}).scalar():
                assert time.monotonic() < deadline, "the other connection never waited"
                time.sleep(0.005)


def backend_id_query(engine: Engine) -> str:
    if engine.dialect.name == "postgresql":
        return "SELECT pg_backend_pid()"
    return "SELECT CONNECTION_ID()"


def _wait(event: threading.Event) -> None:
    assert event.wait(WAIT), "the other side never got there"


class Deadlock(Fault):
    """The handler and another connection lock rows 1 and 2 in opposite orders; the handler
    is the victim: on PostgreSQL its deadlock_timeout is the shorter, on MariaDB its
    transaction is the lighter (the other one wrote ballast rows first)."""

    def __init__(self, engine: Engine) -> None:
        self.has_2 = threading.Event()
        self.has_1 = threading.Event()
        self.other = OtherConnection(engine, self._other)

    def _other(self, connection: Any) -> None:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql("SET LOCAL deadlock_timeout = '60s'")
        else:
            connection.execute(insert(ballast), [{"pad": "x" * 50}] * 300)
        connection.exec_driver_sql("UPDATE lost_locks SET v = v + 1 WHERE id = 2")
        self.has_2.set()
        _wait(self.has_1)
        connection.exec_driver_sql("UPDATE lost_locks SET v = v + 1 WHERE id = 1")

    def start(self) -> None:
        self.other.start()
        _wait(self.has_2)

    def strike(self) -> Strike:
        if self.other.engine.dialect.name == "postgresql":
            yield "SET LOCAL deadlock_timeout = '10ms'"
        yield "UPDATE lost_locks SET v = v + 1 WHERE id = 1"
        self.has_1.set()
        self.other.wait_until_blocked()
        yield "UPDATE lost_locks SET v = v + 1 WHERE id = 2"
        raise AssertionError("the handler was not the deadlock victim")

    def finish(self) -> None:
        self.other.join()


class LockWaitTimeout(Fault):
    """Another connection holds row 1; the handler gives up waiting for it after a second
    (MariaDB's shortest ``innodb_lock_wait_timeout``) or 100 ms (PostgreSQL's lock_timeout)."""

    def __init__(self, engine: Engine) -> None:
        self.holds = threading.Event()
        self.release = threading.Event()
        self.other = OtherConnection(engine, self._other)

    def _other(self, connection: Any) -> None:
        connection.exec_driver_sql("UPDATE lost_locks SET v = v + 1 WHERE id = 1")
        self.holds.set()
        _wait(self.release)

    def start(self) -> None:
        self.other.start()
        _wait(self.holds)

    def strike(self) -> Strike:
        if self.other.engine.dialect.name == "postgresql":
            yield "SET LOCAL lock_timeout = '100ms'"
        else:
            yield "SET SESSION innodb_lock_wait_timeout = 1"
        try:
            yield "UPDATE lost_locks SET v = v + 1 WHERE id = 1"
        finally:
            self.release.set()
        raise AssertionError("the handler's lock wait did not time out")

    def finish(self) -> None:
        self.release.set()
        self.other.join()


class KilledConnection(Fault):
    """Another connection kills the handler's: ``pg_terminate_backend``, MariaDB's ``KILL``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def strike(self) -> Strike:
        victim = (yield backend_id_query(self.engine)).scalar()
        with self.engine.connect() as killer:
            if self.engine.dialect.name == "postgresql":
                killer.execute(text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": victim})
            else:
                killer.exec_driver_sql(f"KILL {int(victim)}")
                self._wait_until_gone(killer, int(victim))
        yield "SELECT 1"
        raise AssertionError("the handler's connection was not killed")

    @staticmethod
    def _wait_until_gone(killer: Any, victim: int) -> None:
        """Until MariaDB has rolled the killed session's transaction back and let go of its
        locks: till then its batch is locked, and a claim skips it (as it would skip the
        batch of a connection dropped without the server noticing yet, until it does)."""
        query = text(
            "SELECT COUNT(*) FROM information_schema.processlist WHERE id = :id"
            " UNION ALL "
            "SELECT COUNT(*) FROM information_schema.innodb_trx WHERE trx_mysql_thread_id = :id"
        )
        deadline = time.monotonic() + WAIT
        while any(killer.execute(query, {"id": victim}).scalars()):
            assert time.monotonic() < deadline, "the killed session never went"
            time.sleep(0.005)


INTERRUPT = "busway_test_interrupt"


class InterruptedStatement(Fault):
    """SQLite rolls back the whole transaction when a write statement in it is interrupted
    (``sqlite3_interrupt``): the statement calls a function that interrupts its connection."""

    def strike(self) -> Strike:
        yield "REGISTER INTERRUPT"
        yield (
            "INSERT INTO lost_effects (job) WITH RECURSIVE r(i) AS "
            "(SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 1000000) "
            f"SELECT -1 FROM r WHERE {INTERRUPT}() IS NULL"
        )
        raise AssertionError("the handler's statement was not interrupted")


def register_interrupt(raw: Any) -> None:
    """``INTERRUPT()`` on a raw sqlite3 (or aiosqlite adapter) connection."""
    inner = getattr(raw, "_connection", None)
    sqlite = inner._conn if inner is not None else raw  # aiosqlite's own connection
    raw.create_function(INTERRUPT, 0, sqlite.interrupt)


# -- the handlers ----------------------------------------------------------------------------


class Handlers:
    """Writes a command's effect, then strikes the victim's first run."""

    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self.runs: Counter[int] = Counter()

    def _strikes(self, job: Job) -> bool:
        self.runs[job.n] += 1
        return job.n == VICTIM and self.runs[job.n] == 1


class SyncHandlers(Handlers):
    @command_handler
    def work(self, job: Job, session: Session) -> None:
        session.execute(insert(effects).values(job=job.n))
        if self._strikes(job):
            steps = self.fault.strike()
            result: Any = None
            failure: DBAPIError | None = None
            while True:
                try:
                    statement = steps.send(result) if failure is None else steps.throw(failure)
                except StopIteration:
                    return
                result = failure = None
                if statement == "REGISTER INTERRUPT":
                    register_interrupt(session.connection().connection.dbapi_connection)
                    continue
                try:
                    result = session.execute(text(statement))
                except DBAPIError as error:
                    failure = error


class AsyncHandlers(Handlers):
    @command_handler
    async def work(self, job: Job, session: AsyncSession) -> None:
        await session.execute(insert(effects).values(job=job.n))
        if self._strikes(job):
            steps = self.fault.strike()
            result: Any = None
            failure: DBAPIError | None = None
            while True:
                try:
                    statement = steps.send(result) if failure is None else steps.throw(failure)
                except StopIteration:
                    return
                result = failure = None
                if statement == "REGISTER INTERRUPT":
                    connection = await session.connection()
                    await connection.run_sync(
                        lambda sync: register_interrupt(sync.connection.dbapi_connection)
                    )
                    continue
                try:
                    result = await session.execute(text(statement))
                except DBAPIError as error:
                    failure = error


# -- the tests -------------------------------------------------------------------------------

RETRY_AT_ONCE = RetryPolicy(retries=3, initial_delay=0, jitter=0)


@pytest.fixture(params=[False, True], ids=["savepoints", "redo_batches"])
def redo_batches(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture(params=["run", "arun"])
def run_mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def handle_batch_under(fault: Fault, make_messaging, engine, redo_batches, run_mode):
    """Five commands in one batch, the third struck: each one's effect counts once."""
    handlers = SyncHandlers(fault) if run_mode == "run" else AsyncHandlers(fault)
    channel = SqlChannel("jobs", batch_size=JOBS, redo_batches=redo_batches)
    messaging = make_messaging([handlers], [channel], retry=RETRY_AT_ONCE)
    with messaging.transaction():
        for n in range(JOBS):
            messaging.gateway(JobBus).send(Job(n))
    fault.start()
    try:
        if run_mode == "run":
            result = messaging.run("jobs")
        else:
            result = await messaging.arun("jobs")
    finally:
        fault.finish()

    outcome = {
        "effects": effect_counts(engine),
        "left on the channel": messaging.channel("jobs").depth(),
        "dead letters": [letter.error_message for letter in messaging.dead_letters.list()],
        "victim's runs": handlers.runs[VICTIM],  # struck once, then its retry
        "handled, failed": (result.handled, result.failed),
    }
    assert outcome == {
        "effects": {n: 1 for n in range(JOBS)},
        "left on the channel": 0,
        "dead letters": [],
        "victim's runs": 2,
        "handled, failed": (JOBS + 1, 1),
    }


servers_only = pytest.mark.parametrize("database_url", ["postgresql", "mariadb"], indirect=True)
"""SQLite has one writer, the batch, which holds the write lock: a handler never waits for a
lock there, and no server can drop its connection. The database ending its transaction is
``test_an_interrupted_sqlite_statement_redoes_its_batch`` there."""
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@servers_only
async def test_a_deadlock_victim_redoes_its_batch(
    make_messaging, database_url, engine, redo_batches, run_mode
):
    """MariaDB rolls the whole transaction back; PostgreSQL only the savepoint (or, without
    savepoints, aborts the transaction): either way every command counts once."""
    fault = Deadlock(engine)
    await handle_batch_under(fault, make_messaging, engine, redo_batches, run_mode)


@servers_only
async def test_a_lock_wait_timeout_in_a_handler_is_its_failure_alone(
    make_messaging, database_url, engine, redo_batches, run_mode
):
    """InnoDB rolls back only the statement (unless ``innodb_rollback_on_timeout``, when it
    is a deadlock's case); PostgreSQL the savepoint."""
    fault = LockWaitTimeout(engine)
    await handle_batch_under(fault, make_messaging, engine, redo_batches, run_mode)


@servers_only
async def test_a_connection_killed_under_a_handler_redoes_its_batch(
    make_messaging, database_url, engine, redo_batches, run_mode
):
    fault = KilledConnection(engine)
    await handle_batch_under(fault, make_messaging, engine, redo_batches, run_mode)


@sqlite_only
async def test_an_interrupted_sqlite_statement_redoes_its_batch(
    make_messaging, database_url, engine, redo_batches, run_mode
):
    """SQLite's own way to end a transaction under a savepoint. (Its "database is locked"
    cannot happen mid-batch: the batch takes the write lock with BEGIN IMMEDIATE.)"""
    await handle_batch_under(InterruptedStatement(), make_messaging, engine, redo_batches, run_mode)


# -- a transaction ended under busway's own statements -----------------------------------------


class QuietKiller:
    """Writes each command's effect through the batch's connection, outside any savepoint;
    on its first run, the last command's handler then has that connection killed and
    returns as if nothing happened: the next statement is the acknowledgement."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.runs: Counter[int] = Counter()

    def _kill(self, victim: int) -> None:
        with self.engine.connect() as killer:
            if self.engine.dialect.name == "postgresql":
                killer.execute(text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": victim})
            else:
                killer.exec_driver_sql(f"KILL {int(victim)}")
                KilledConnection._wait_until_gone(killer, victim)

    def _strikes(self, job: Job) -> bool:
        self.runs[job.n] += 1
        return job.n == JOBS - 1 and self.runs[job.n] == 1


class SyncQuietKiller(QuietKiller):
    @command_handler(transactional=False)
    def work(self, job: Job) -> None:
        transaction = current_transaction.get()
        assert transaction is not None
        connection = transaction.connection
        assert isinstance(connection, Connection)
        connection.execute(insert(effects).values(job=job.n))
        if self._strikes(job):
            self._kill(connection.execute(text(backend_id_query(self.engine))).scalar_one())


class AsyncQuietKiller(QuietKiller):
    @command_handler(transactional=False)
    async def work(self, job: Job) -> None:
        transaction = current_transaction.get()
        assert transaction is not None
        connection = transaction.connection
        assert isinstance(connection, AsyncConnection)
        await connection.execute(insert(effects).values(job=job.n))
        if self._strikes(job):
            query = text(backend_id_query(self.engine))
            self._kill((await connection.execute(query)).scalar_one())


@servers_only
async def test_a_connection_killed_before_the_acknowledgement_redoes_its_batch(
    make_messaging, database_url, engine, redo_batches, run_mode
):
    """The acknowledgement fails: the batch is not reported handled, but redone, every
    handler run again (their writes were rolled back) and each command counted once."""
    handlers = SyncQuietKiller(engine) if run_mode == "run" else AsyncQuietKiller(engine)
    channel = SqlChannel("jobs", batch_size=JOBS, redo_batches=redo_batches)
    messaging = make_messaging([handlers], [channel], retry=RETRY_AT_ONCE)
    with messaging.transaction():
        for n in range(JOBS):
            messaging.gateway(JobBus).send(Job(n))
    if run_mode == "run":
        result = messaging.run("jobs")
    else:
        result = await messaging.arun("jobs")

    assert {
        "effects": effect_counts(engine),
        "left on the channel": messaging.channel("jobs").depth(),
        "runs": dict(handlers.runs),
        "handled, failed": (result.handled, result.failed),
    } == {
        "effects": {n: 1 for n in range(JOBS)},
        "left on the channel": 0,
        "runs": {n: 2 for n in range(JOBS)},
        "handled, failed": (JOBS, 0),
    }


# -- a handler that catches the database's error and carries on --------------------------------


class Swallowing:
    """Catches what its fault raises, and returns as if it had succeeded."""

    def __init__(self, fault: Fault) -> None:
        self.fault = fault

    def strike(self) -> Strike:
        try:
            yield from self.fault.strike()
        except DBAPIError:
            return

    def start(self) -> None:
        self.fault.start()

    def finish(self) -> None:
        self.fault.finish()


async def test_a_handler_that_swallows_the_end_of_its_transaction_loses_nothing(
    make_messaging, database_url, engine, redo_batches, run_mode
):
    """Its caught error still ended the transaction (MariaDB begins a new one at the next
    statement, SQLite commits each next one on its own, PostgreSQL refuses them): with a
    savepoint, releasing it fails and the handler counts as failed; without, the batch is
    found ended as the handler returns, and redone whole."""
    if backend_of(database_url) == "sqlite":
        fault: Fault = InterruptedStatement()
    else:
        fault = Deadlock(engine)
    swallowing = Swallowing(fault)
    handlers = SyncHandlers(swallowing) if run_mode == "run" else AsyncHandlers(swallowing)
    channel = SqlChannel("jobs", batch_size=JOBS, redo_batches=redo_batches)
    messaging = make_messaging([handlers], [channel], retry=RETRY_AT_ONCE)
    with messaging.transaction():
        for n in range(JOBS):
            messaging.gateway(JobBus).send(Job(n))
    swallowing.start()
    try:
        if run_mode == "run":
            result = messaging.run("jobs")
        else:
            result = await messaging.arun("jobs")
    finally:
        swallowing.finish()

    assert {
        "effects": effect_counts(engine),
        "left on the channel": messaging.channel("jobs").depth(),
        "dead letters": messaging.dead_letters.list(),
        "victim's runs": handlers.runs[VICTIM],
    } == {
        "effects": {n: 1 for n in range(JOBS)},
        "left on the channel": 0,
        "dead letters": [],
        "victim's runs": 2,
    }
    # Without savepoints the ended transaction is found as the handler returns (the batch
    # redone, no failure) or, on a loaded MariaDB, by the victim's next statement (its
    # failure, retried): either way every effect counts once.
    allowed = [(JOBS, 0), (JOBS + 1, 1)] if redo_batches else [(JOBS + 1, 1)]
    assert (result.handled, result.failed) in allowed


class Relentless(QuietKiller):
    """Has the batch's connection killed on every run of the last command."""

    def _strikes(self, job: Job) -> bool:
        self.runs[job.n] += 1
        return job.n == JOBS - 1


class SyncRelentless(Relentless, SyncQuietKiller):
    pass


class AsyncRelentless(Relentless, AsyncQuietKiller):
    pass


@servers_only
async def test_a_batch_the_database_keeps_ending_is_given_up_unacknowledged(
    make_messaging, database_url, engine, run_mode
):
    """After a few redos the error goes to the worker (a run until empty raises it), and
    every message is still on the channel, none of their writes committed."""
    handlers = SyncRelentless(engine) if run_mode == "run" else AsyncRelentless(engine)
    channel = SqlChannel("jobs", batch_size=JOBS)
    messaging = make_messaging([handlers], [channel], retry=RETRY_AT_ONCE)
    with messaging.transaction():
        for n in range(JOBS):
            messaging.gateway(JobBus).send(Job(n))

    with pytest.raises(DBAPIError) as raised:
        if run_mode == "run":
            messaging.run("jobs")
        else:
            await messaging.arun("jobs")

    assert raised.value.connection_invalidated
    assert effect_counts(engine) == {}
    assert messaging.channel("jobs").depth() == JOBS
    assert handlers.runs == {n: 1 + MAX_LOST for n in range(JOBS)}
