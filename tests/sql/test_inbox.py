"""The inbox in a SqlChannel's batch: one statement per batch, answered by the unique index
whatever the planner's statistics, and every guarantee kept when a record exists already."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    insert,
    select,
    text,
)
from sqlalchemy.orm import Session

from busway import CommandBus, RetryPolicy, SqlChannel, asynchronous, command_handler
from busway.testing import FakeClock, record
from dbsupport import create_tables, sync_url

OLD_RECORDS = 20_000


@dataclass
class Job:
    id: str


@asynchronous("jobs")
class JobBus(CommandBus):
    pass


class Refused(Exception):
    pass


metadata = MetaData()
effects = Table(
    "test_inbox_effects",
    metadata,
    Column("n", Integer, primary_key=True, autoincrement=True),
    Column("job", String(50), nullable=False),
)


@pytest.fixture
def tables(database_url):
    create_tables(database_url, metadata)


class Worker:
    """Writes an effect row for every job; fails the first attempt of those in ``fail_first``."""

    def __init__(self, fail_first: frozenset[str] = frozenset()) -> None:
        self.fail_first = fail_first
        self.attempts: dict[str, int] = {}

    @command_handler
    def work(self, job: Job, session: Session) -> None:
        self.attempts[job.id] = self.attempts.get(job.id, 0) + 1
        session.execute(insert(effects).values(job=job.id))
        if job.id in self.fail_first and self.attempts[job.id] == 1:
            raise Refused(job.id)


def query(url: str, sql: str) -> Any:
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            return connection.execute(text(sql)).all()
    finally:
        engine.dispose()


def effect_counts(url: str) -> dict[str, int]:
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            jobs = connection.execute(select(effects.c.job)).scalars().all()
    finally:
        engine.dispose()
    return {job: jobs.count(job) for job in sorted(set(jobs))}


@contextmanager
def inbox_statements() -> Iterator[list[tuple[str, Any]]]:
    """Every statement on ``busway_inbox`` the engines of this process send in the block,
    with its parameters."""
    sent: list[tuple[str, Any]] = []

    def note(connection: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "busway_inbox" in statement:
            sent.append((statement, parameters))

    event.listen(Engine, "before_cursor_execute", note)
    try:
        yield sent
    finally:
        event.remove(Engine, "before_cursor_execute", note)


def test_a_batch_writes_its_records_in_one_statement_and_reads_none(
    make_messaging, database_url, tables
):
    messaging = make_messaging([Worker()], [SqlChannel("jobs")])
    for number in range(100):
        messaging.gateway(JobBus).send(Job(str(number)))

    with inbox_statements() as sent:
        assert messaging.run("jobs").handled == 100

    assert [statement.lstrip().split()[0].upper() for statement, _ in sent] == ["INSERT"]
    assert query(database_url, "SELECT COUNT(*) FROM busway_inbox") == [(100,)]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_on_an_inbox_never_analyzed_a_batch_is_checked_through_the_unique_index(
    make_messaging, database_url, tables
):
    """A fresh install: the inbox holds many records and the planner knows nothing of them
    (never analyzed, autovacuum off). The batch's statement still goes through the index."""
    messaging = make_messaging([Worker()], [SqlChannel("jobs")])
    engine = create_engine(sync_url(database_url))
    try:
        with engine.begin() as connection:
            connection.execute(text("ALTER TABLE busway_inbox SET (autovacuum_enabled = false)"))
            connection.execute(
                text(
                    "INSERT INTO busway_inbox (message_key, handler, handled_at) "
                    "SELECT 'old-' || n, 'work', 0 FROM generate_series(1, :count) AS n"
                ),
                {"count": OLD_RECORDS},
            )
        never_analyzed = "SELECT reltuples FROM pg_class WHERE relname = 'busway_inbox'"
        assert query(database_url, never_analyzed) == [(-1,)]
        for number in range(100):
            messaging.gateway(JobBus).send(Job(str(number)))

        with inbox_statements() as sent:
            assert messaging.run("jobs").handled == 100

        plans = []
        with engine.connect() as connection:
            for statement, parameters in sent:
                explained = connection.exec_driver_sql("EXPLAIN " + statement, parameters)
                plans.append("\n".join(line for (line,) in explained))
    finally:
        engine.dispose()
    assert plans
    assert not [plan for plan in plans if "Seq Scan" in plan], plans
    (plan,) = plans
    assert "Conflict Arbiter Indexes: busway_inbox_once" in plan, plan
    assert query(database_url, never_analyzed) == [(-1,)]  # still never analyzed
    assert query(database_url, "SELECT COUNT(*) FROM busway_inbox") == [(OLD_RECORDS + 100,)]


@pytest.mark.parametrize(
    ("redo_batches", "attempts"),
    [
        # The batch is redone for the repeat: c, whose failure its savepoint undid, too.
        (False, {"a": 2, "b": 2, "c": 2, "d": 2}),
        # The batch is redone for c's failure, which is then retried: the repeat is found.
        (True, {"a": 2, "b": 2, "c": 2, "d": 1}),
    ],
    ids=["savepoints", "redo_batches"],
)
def test_a_batch_with_a_message_handled_before_takes_effect_once_and_retries_its_failure(
    make_messaging, database_url, tables, redo_batches, attempts
):
    """A message sent again, in a batch with new ones and one that fails: the batch finds the
    old record as it writes its own, is redone, and the repeat is skipped; the failed message
    is handled again (in the redo, or as its retry); every effect counts once."""
    clock = FakeClock()
    worker = Worker(fail_first=frozenset({"c"}))
    retry = RetryPolicy(retries=1, initial_delay=1, jitter=0)
    channel = SqlChannel("jobs", redo_batches=redo_batches)
    messaging = make_messaging([worker], [channel], clock=clock, retry=retry)
    with record(messaging) as recorded:
        messaging.gateway(JobBus).send(Job("a"))
    assert messaging.run("jobs").handled == 1

    messaging.gateway(JobBus).send(Job("b"))
    (again,) = recorded.envelopes("jobs")
    channel.send(again)
    messaging.gateway(JobBus).send(Job("c"))
    messaging.gateway(JobBus).send(Job("d"))
    messaging.run("jobs")
    clock.advance(1)
    messaging.run("jobs")

    assert effect_counts(database_url) == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert worker.attempts == attempts
    assert query(database_url, "SELECT COUNT(*) FROM busway_inbox") == [(4,)]
    assert channel.depth() == 0
    assert messaging.dead_letters.list() == []
