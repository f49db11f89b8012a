"""Consuming a SqlChannel: delays, FIFO, lease mode, failures, dead letters, asyncio."""

import asyncio
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    insert,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from busway import (
    CommandBus,
    EventBus,
    Message,
    Messaging,
    RetryPolicy,
    SqlChannel,
    asynchronous,
    command_handler,
    event_handler,
)
from busway.errors import ConfigurationError
from busway.interceptors import Interceptor, Invocation
from busway.testing import FakeClock
from dbsupport import create_tables, statements_sent, sync_url


@dataclass
class Job:
    id: str
    fail: bool = False


@dataclass
class JobWasDone:
    id: str


@asynchronous("jobs")
class JobBus(CommandBus):
    """Commands sent here wait on the ``jobs`` channel for a worker."""


@asynchronous("jobs")
class JobEvents(EventBus):
    pass


@asynchronous("outbox")
class OutboxEventBus(EventBus):
    pass


class Refused(Exception):
    pass


metadata = MetaData()
effects = Table(
    "test_effects",
    metadata,
    Column("n", Integer, primary_key=True, autoincrement=True),
    Column("job", String(50), nullable=False),
    Column("handler", String(50), nullable=False),
)


@pytest.fixture
def tables(database_url):
    create_tables(database_url, metadata)


def effect_rows(url):
    """(job, handler) of every effect written, in the order written."""
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                select(effects.c.job, effects.c.handler).order_by(effects.c.n)
            ).all()
    finally:
        engine.dispose()
    return [tuple(row) for row in rows]


class Worker:
    """Writes an effect row for every job, through the injected Session."""

    def __init__(self) -> None:
        self.done: list[str] = []
        self.attempts: dict[str, int] = {}
        self.fail_first: set[str] = set()

    @command_handler
    def work(self, job: Job, session: Session) -> None:
        self.attempts[job.id] = self.attempts.get(job.id, 0) + 1
        session.execute(insert(effects).values(job=job.id, handler="work"))
        if job.fail or (job.id in self.fail_first and self.attempts[job.id] == 1):
            raise Refused(job.id)
        self.done.append(job.id)


def jobs(make_messaging, handler, channel=None, **options):
    return make_messaging([handler], [channel or SqlChannel("jobs")], **options)


# -- delays and order --------------------------------------------------------------------------


def test_delayed_message_waits_for_its_time(make_messaging, tables):
    clock = FakeClock()
    worker = Worker()
    messaging = jobs(make_messaging, worker, clock=clock)
    bus = messaging.gateway(JobBus)

    bus.send(Job("later"), delay=10)
    bus.send(Job("soon"), delay=0.25)
    bus.send(Job("now"))

    assert messaging.run("jobs").handled == 1
    assert worker.done == ["now"]
    clock.advance(0.249)
    assert messaging.run("jobs").handled == 0
    clock.advance(0.002)  # millisecond precision
    assert messaging.run("jobs").handled == 1
    assert worker.done == ["now", "soon"]
    clock.advance(9)
    assert messaging.run("jobs").handled == 0
    clock.advance(1)
    assert messaging.run("jobs").handled == 1
    assert worker.done == ["now", "soon", "later"]
    assert messaging.channel("jobs").depth() == 0


def test_fifo_for_one_consumer(make_messaging, database_url, tables):
    worker = Worker()
    messaging = jobs(make_messaging, worker, SqlChannel("jobs", batch_size=7))
    bus = messaging.gateway(JobBus)
    expected = [f"j-{index:03}" for index in range(100)]

    for job in expected[:50]:
        bus.send(Job(job))  # each in its own transaction
    with messaging.transaction():
        for job in expected[50:]:
            bus.send(Job(job))

    result = messaging.run("jobs")
    assert result.handled == 100
    assert worker.done == expected
    assert [job for job, _ in effect_rows(database_url)] == expected


# -- failures, retries, dead letters -----------------------------------------------------------


def test_failed_handler_rolls_back_only_its_own_writes(make_messaging, database_url, tables):
    worker = Worker()
    worker.fail_first = {"b"}
    messaging = jobs(make_messaging, worker, retry=RetryPolicy(retries=0))
    bus = messaging.gateway(JobBus)

    for job in ("a", "b", "c"):
        bus.send(Job(job))
    result = messaging.run("jobs")  # all three in one claimed batch

    assert (result.handled, result.failed) == (3, 1)
    assert worker.attempts["b"] == 1  # failed once, not run again
    assert effect_rows(database_url) == [("a", "work"), ("c", "work")]
    assert messaging.channel("jobs").depth() == 0
    (letter,) = messaging.dead_letters.list()
    assert letter.channel == "jobs"
    assert letter.handler is not None and letter.handler.endswith("work")
    assert letter.error_message == "b"
    assert letter.error_type.endswith("Refused")
    assert letter.attempts == 1
    assert msgspec.json.decode(letter.body) == {"id": "b", "fail": False}

    # Replayed, the letter's job takes effect, once.
    assert messaging.dead_letters.replay([letter.id]) == 1
    assert messaging.dead_letters.list() == []
    assert messaging.run("jobs").handled == 1
    assert worker.attempts["b"] == 2
    assert effect_rows(database_url) == [("a", "work"), ("c", "work"), ("b", "work")]


def test_retry_commits_with_the_claim_and_takes_effect_once(make_messaging, database_url, tables):
    clock = FakeClock()
    worker = Worker()
    worker.fail_first = {"b"}
    retry = RetryPolicy(retries=2, initial_delay=5, jitter=0)
    messaging = jobs(make_messaging, worker, clock=clock, retry=retry)
    bus = messaging.gateway(JobBus)

    bus.send(Job("a"))
    bus.send(Job("b"))
    result = messaging.run("jobs")

    assert (result.handled, result.failed) == (2, 1)
    assert effect_rows(database_url) == [("a", "work")]
    assert messaging.channel("jobs").depth() == 1  # the retry, due in 5 s
    assert messaging.run("jobs").handled == 0
    clock.advance(5)
    assert messaging.run("jobs").handled == 1
    assert effect_rows(database_url) == [("a", "work"), ("b", "work")]
    assert worker.attempts["b"] == 2
    assert messaging.dead_letters.list() == []
    assert messaging.channel("jobs").depth() == 0


class TwoListeners:
    def __init__(self) -> None:
        self.flaky_calls = 0

    @event_handler
    def steady(self, event: JobWasDone, session: Session) -> None:
        session.execute(insert(effects).values(job=event.id, handler="steady"))

    @event_handler
    def flaky(self, event: JobWasDone, session: Session) -> None:
        self.flaky_calls += 1
        session.execute(insert(effects).values(job=event.id, handler="flaky"))
        if self.flaky_calls == 1:
            raise Refused(event.id)


def test_one_failing_event_handler_never_reruns_another(make_messaging, database_url, tables):
    clock = FakeClock()
    listeners = TwoListeners()
    retry = RetryPolicy(retries=1, initial_delay=1, jitter=0)
    messaging = jobs(make_messaging, listeners, clock=clock, retry=retry)

    messaging.gateway(JobEvents).publish(JobWasDone("e-1"))
    assert messaging.run("jobs").failed == 1
    assert effect_rows(database_url) == [("e-1", "steady")]
    clock.advance(1)
    assert messaging.run("jobs").handled == 1

    assert sorted(effect_rows(database_url)) == [("e-1", "flaky"), ("e-1", "steady")]
    assert listeners.flaky_calls == 2


class Relay:
    """An event handler that publishes a follow-up through the outbox, then fails."""

    def __init__(self) -> None:
        self.followed_up: list[str] = []

    @command_handler
    def start(self, job: Job, events: OutboxEventBus) -> None:
        events.publish(JobWasDone(job.id))
        if job.fail:
            raise Refused(job.id)

    @event_handler
    def follow_up(self, event: JobWasDone) -> None:
        self.followed_up.append(event.id)


def test_failed_handler_takes_back_what_it_sent(make_messaging, tables):
    relay = Relay()
    messaging = make_messaging(
        [relay], [SqlChannel("jobs"), SqlChannel("outbox")], retry=RetryPolicy(retries=0)
    )
    bus = messaging.gateway(JobBus)

    bus.send(Job("ok"))
    bus.send(Job("ko", fail=True))
    assert messaging.run("jobs").failed == 1
    messaging.run("outbox")

    assert relay.followed_up == ["ok"]
    assert len(messaging.dead_letters.list()) == 1


# -- stopping ---------------------------------------------------------------------------------


class Stopper:
    def __init__(self) -> None:
        self.done: list[str] = []
        self.worker = None

    @command_handler(transactional=False)
    def work(self, job: Job) -> None:
        self.done.append(job.id)
        if self.worker is not None:
            self.worker.stop()  # finish this one, then stop


@pytest.mark.parametrize("mode", ["transaction", "lease"])
def test_a_worker_stopped_mid_batch_leaves_the_rest_to_others(make_messaging, tables, mode):
    clock = FakeClock()
    stopper = Stopper()
    messaging = jobs(make_messaging, stopper, SqlChannel("jobs", mode=mode), clock=clock)
    for index in range(5):
        messaging.gateway(JobBus).send(Job(str(index)))

    worker = messaging.worker("jobs")
    stopper.worker = worker
    result = worker.run()
    assert (result.handled, result.reason) == (1, "stopped")

    stopper.worker = None
    assert messaging.run("jobs").handled == 4  # at once: the clock has not moved
    assert stopper.done == ["0", "1", "2", "3", "4"]


# -- lease mode --------------------------------------------------------------------------------


class Slow:
    """Blocks on its first job until released; the stand-in for a worker that died."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    @command_handler(transactional=False)
    def work(self, job: Job, message: Message) -> None:
        self.calls.append(job.id)
        if len(self.calls) == 1:
            self.entered.set()
            assert self.release.wait(30)


def test_lease_expires_and_another_worker_takes_the_message_over(make_messaging, tables):
    clock = FakeClock()
    slow = Slow()
    channel = SqlChannel("jobs", mode="lease", visibility_timeout=30)
    first = jobs(make_messaging, slow, channel, clock=clock)
    second = jobs(make_messaging, slow, SqlChannel("jobs", mode="lease"), clock=clock)
    first.gateway(JobBus).send(Job("j-1"))

    outcome = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("run", first.run("jobs")))
    thread.start()
    try:
        assert slow.entered.wait(30)
        assert second.run("jobs").handled == 0  # claimed, not acknowledged
        clock.advance(29.9)
        assert second.run("jobs").handled == 0
        clock.advance(0.2)
        assert second.run("jobs").handled == 1  # the stale claim is taken over
    finally:
        slow.release.set()
        thread.join(30)
    assert outcome["run"].handled == 1
    assert slow.calls == ["j-1", "j-1"]  # lease mode is at-least-once
    assert first.channel("jobs").depth() == 0


# -- asyncio -----------------------------------------------------------------------------------


class AsyncWorker:
    def __init__(self) -> None:
        self.done: list[str] = []

    @command_handler
    async def work(self, job: Job, session: AsyncSession) -> None:
        await session.execute(insert(effects).values(job=job.id, handler="work"))
        if job.fail:
            raise Refused(job.id)
        self.done.append(job.id)


async def test_async_worker_rolls_back_a_failed_handler(make_messaging, database_url, tables):
    worker = AsyncWorker()
    messaging = jobs(make_messaging, worker, retry=RetryPolicy(retries=0))
    bus = messaging.gateway(JobBus)

    await bus.asend(Job("a"))
    await bus.asend(Job("b", fail=True))
    await bus.asend(Job("c"))
    result = await messaging.arun("jobs")

    assert (result.handled, result.failed) == (3, 1)
    assert sorted(set(worker.done)) == ["a", "c"]
    assert effect_rows(database_url) == [("a", "work"), ("c", "work")]
    assert [letter.error_message for letter in messaging.dead_letters.list()] == ["b"]
    assert messaging.channel("jobs").depth() == 0


async def test_async_worker_runs_plain_def_handlers_in_its_transaction(
    make_messaging, database_url, tables
):
    worker = Worker()
    messaging = jobs(make_messaging, worker, retry=RetryPolicy(retries=0))
    bus = messaging.gateway(JobBus)

    await bus.asend(Job("a"))
    await bus.asend(Job("b", fail=True))
    result = await messaging.arun("jobs")

    assert (result.handled, result.failed) == (2, 1)
    assert effect_rows(database_url) == [("a", "work")]
    assert messaging.channel("jobs").depth() == 0


async def test_several_asyncio_consumers_stop_when_the_channel_is_empty(
    make_messaging, database_url, tables
):
    worker = Worker()
    messaging = jobs(make_messaging, worker)
    for job in "abcdefghij":
        await messaging.gateway(JobBus).asend(Job(job))

    result = await asyncio.wait_for(messaging.arun("jobs", concurrency=3), timeout=60)

    assert (result.handled, result.reason) == (10, "empty")
    assert sorted(worker.done) == list("abcdefghij")


def test_a_neighbours_failure_does_not_run_a_handler_again(make_messaging, tables):
    worker = Worker()
    worker.fail_first = {"b"}
    messaging = jobs(make_messaging, worker, retry=RetryPolicy(retries=0))
    for job in ("a", "b"):
        messaging.gateway(JobBus).send(Job(job))

    messaging.run("jobs")

    assert worker.attempts == {"a": 1, "b": 1}


def test_with_redo_batches_a_neighbours_failure_runs_a_handler_again_but_counts_once(
    make_messaging, database_url, tables
):
    worker = Worker()
    worker.fail_first = {"b"}
    channel = SqlChannel("jobs", redo_batches=True)
    messaging = jobs(make_messaging, worker, channel, retry=RetryPolicy(retries=0))
    for job in ("a", "b"):
        messaging.gateway(JobBus).send(Job(job))

    result = messaging.run("jobs")

    assert worker.attempts == {"a": 2, "b": 1}
    assert (result.handled, result.failed) == (2, 1)
    assert effect_rows(database_url) == [("a", "work")]


# -- savepoints only for handlers that write ---------------------------------------------------


class Notifier:
    """A handler that never touches the database (but runs in the claim's transaction)."""

    def __init__(self) -> None:
        self.notified: list[str] = []

    @command_handler
    def notify(self, job: Job) -> None:
        self.notified.append(job.id)


class FollowUps:
    def __init__(self) -> None:
        self.followed_up: list[str] = []

    @event_handler
    async def follow_up(self, event: JobWasDone) -> None:
        self.followed_up.append(event.id)


def test_a_handler_that_never_writes_takes_no_savepoint(make_messaging, database_url, tables):
    quiet, writer = Notifier(), Worker()
    messaging = make_messaging([quiet], [SqlChannel("jobs")])
    for job in "abcde":
        messaging.gateway(JobBus).send(Job(job))

    with statements_sent() as sent:
        assert messaging.run("jobs").handled == 5
    assert quiet.notified == list("abcde")
    assert [statement for statement in sent if statement.startswith("SAVEPOINT")] == []

    messaging = jobs(make_messaging, writer)
    for job in "abcde":
        messaging.gateway(JobBus).send(Job(job))
    with statements_sent() as sent:
        assert messaging.run("jobs").handled == 5
    # one per handler that asked for the Session
    assert len([statement for statement in sent if statement.startswith("SAVEPOINT")]) == 5


class AsyncRelay:
    """An async handler that publishes through the outbox, then fails; it has no Session."""

    @command_handler
    async def start(self, job: Job, events: OutboxEventBus) -> None:
        await events.apublish(JobWasDone(job.id))
        if job.fail:
            raise Refused(job.id)


async def test_an_async_handler_that_fails_takes_back_what_it_sent(make_messaging, tables):
    notifier = FollowUps()
    messaging = make_messaging(
        [AsyncRelay(), notifier],
        [SqlChannel("jobs"), SqlChannel("outbox")],
        retry=RetryPolicy(retries=0),
    )
    bus = messaging.gateway(JobBus)
    for job in (Job("ok"), Job("ko", fail=True), Job("ok too")):
        await bus.asend(job)

    assert (await messaging.arun("jobs")).failed == 1
    await messaging.arun("outbox")

    assert notifier.followed_up == ["ok", "ok too"]


# -- connections broken under a worker ----------------------------------------------------------


def drop_other_connections(url):
    """Close, from the server's side, every other connection to the test's database."""
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                connection.exec_driver_sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                return
            ids = connection.exec_driver_sql(
                "SELECT id FROM information_schema.processlist "
                "WHERE db = DATABASE() AND id <> CONNECTION_ID()"
            ).scalars()
            for connection_id in list(ids):
                connection.exec_driver_sql(f"KILL {int(connection_id)}")
    finally:
        engine.dispose()


@pytest.mark.parametrize("database_url", ["postgresql", "mariadb"], indirect=True)
async def test_a_worker_claims_again_on_a_new_connection_when_its_pooled_one_broke(
    make_messaging, database_url, tables
):
    worker = Worker()
    messaging = jobs(make_messaging, worker)
    bus = messaging.gateway(JobBus)
    bus.send(Job("a"))
    assert messaging.run("jobs").handled == 1
    await bus.asend(Job("b"))
    assert (await messaging.arun("jobs")).handled == 1

    drop_other_connections(database_url)  # a server restart, as the pools see it
    bus.send(Job("c"))
    assert messaging.run("jobs").handled == 1
    await bus.asend(Job("d"))
    assert (await messaging.arun("jobs")).handled == 1

    assert worker.done == ["a", "b", "c", "d"]


# -- reading while a worker writes --------------------------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_inspecting_a_sqlite_channel_never_waits_for_the_write_lock(make_messaging, tmp_path):
    messaging = make_messaging(
        [Worker()], [SqlChannel("jobs")], database=f"sqlite:///{tmp_path / 'r.db'}"
    )
    bus = messaging.gateway(JobBus)
    bus.send(Job("committed"))
    holding, done = threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def hold_the_write_lock() -> None:
        with messaging.transaction():
            bus.send(Job("not yet"))  # the transaction holds SQLite's write lock
            holding.set()
            done.wait(30)

    writer = threading.Thread(target=hold_the_write_lock)
    writer.start()
    try:
        assert holding.wait(10)
        channel = messaging.channel("jobs")
        seen["depth"] = channel.depth()
        seen["age"] = channel.oldest_age()
        seen["letters"] = messaging.dead_letters.list()
    finally:
        done.set()
        writer.join()

    assert seen["depth"] == 1  # the committed message; the other is not yet
    assert seen["age"] is not None
    assert seen["letters"] == []
    assert messaging.channel("jobs").depth() == 2


# -- an interceptor that writes inside the transaction ------------------------------------------


class Audit(Interceptor):
    """Runs inside the transaction (after 800) and writes through the handler's Session."""

    order = 850

    def around(self, invocation: Invocation, proceed: Callable[[], Any]) -> Any:
        session = invocation.resources[Session]()
        session.execute(insert(effects).values(job=invocation.message.payload.id, handler="audit"))
        return proceed()


class Picky:
    """A command handler that never touches the database itself."""

    @command_handler
    def work(self, job: Job) -> None:
        if job.fail:
            raise Refused(job.id)


def test_what_an_inner_interceptor_writes_is_undone_with_its_failed_handler(
    make_messaging, database_url, tables
):
    messaging = make_messaging([Picky()], [], interceptors=[Audit()])

    with messaging.transaction():
        messaging.command_bus.send(Job("kept"))
        with pytest.raises(Refused):
            messaging.command_bus.send(Job("undone", fail=True))

    assert effect_rows(database_url) == [("kept", "audit")]


# -- a table made by an earlier version ---------------------------------------------------------


def test_setup_names_the_columns_an_older_table_lacks_and_how_to_add_them(
    make_messaging, database_url
):
    engine = create_engine(sync_url(database_url))
    try:
        with engine.begin() as connection:
            seq, body = {
                "sqlite": ("INTEGER PRIMARY KEY", "BLOB"),
                "mysql": ("BIGINT AUTO_INCREMENT PRIMARY KEY", "LONGBLOB"),
                "postgresql": ("BIGSERIAL PRIMARY KEY", "BYTEA"),
            }[engine.dialect.name]
            connection.exec_driver_sql(
                f"CREATE TABLE busway_messages (seq {seq}, channel VARCHAR(200) NOT NULL, "
                "available_at BIGINT NOT NULL, message_id VARCHAR(64) NOT NULL, "
                f"headers TEXT NOT NULL, body {body} NOT NULL, deliveries INTEGER NOT NULL)"
            )
        with pytest.raises(
            ConfigurationError, match=re.escape("lacks the column(s) queued_at")
        ) as error:
            make_messaging([Worker()], [SqlChannel("jobs")])

        with engine.begin() as connection:
            for statement in str(error.value).split("add them with: ")[1].split("; "):
                connection.exec_driver_sql(statement)
        messaging = make_messaging([Worker()], [SqlChannel("jobs")])
        messaging.gateway(JobBus).send(Job("after"))
        assert messaging.run("jobs").handled == 1
    finally:
        engine.dispose()


def test_a_wake_up_while_a_consumer_claims_ends_its_wait_at_once(tmp_path):
    """A stop or a send that comes while a polling consumer claims, before it waits, is not
    lost: the wait after that empty claim ends at once, not after ``poll_interval``."""
    channel = SqlChannel("idle", poll_interval=600)
    messaging = Messaging(channels=[channel], database=f"sqlite:///{tmp_path / 'busway.db'}")
    messaging.setup()
    channel.interrupt()  # as ``worker.stop()`` does, the consumer not waiting yet
    consumed: list[int] = []
    consumer = threading.Thread(
        target=lambda: consumed.append(channel.consume(lambda _delivery: None, 10, 600)),
        daemon=True,
    )
    consumer.start()
    consumer.join(30)

    assert consumed == [0]
    messaging.close()
