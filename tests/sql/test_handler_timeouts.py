"""Handler time limits on a SqlChannel: a hanging handler fails with HandlerTimeout, is
retried and dead-lettered, while the other messages of its batch are handled exactly once."""

import asyncio
import threading
from collections import Counter
from dataclasses import dataclass

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, insert, select, text
from sqlalchemy.orm import Session

from busway import (
    CommandBus,
    Messaging,
    RetryPolicy,
    SqlChannel,
    asynchronous,
    command_handler,
    handler_timeout,
)
from dbsupport import create_tables, sync_url

HANG = 30.0
"""How long a hanging handler would hang: far past its time limit, short of the test's."""


@dataclass
class Job:
    id: str


@dataclass
class AsyncJob:
    id: str


@asynchronous("jobs")
class JobBus(CommandBus):
    pass


metadata = MetaData()
effects = Table(
    "timeout_effects",
    metadata,
    Column("n", Integer, primary_key=True, autoincrement=True),
    Column("job", String(100), nullable=False),
)


class Jobs:
    """A def handler and an async def handler; the jobs named "hang" hang."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.async_calls: list[str] = []
        self.release = threading.Event()
        self.hanging = threading.Event()
        self.ended = threading.Semaphore(0)
        """Released each time a hanging def handler returns or raises at last."""

    @command_handler
    @handler_timeout(0.5)
    def work(self, job: Job, session: Session) -> None:
        self.calls.append(job.id)
        session.execute(insert(effects).values(job=job.id))
        if job.id == "hang":
            try:
                self.hanging.set()
                self.release.wait(HANG)
                session.execute(insert(effects).values(job="hang, late"))
            finally:
                self.ended.release()

    @command_handler
    async def awork(self, job: AsyncJob) -> None:  # its limit: the worker's default
        self.async_calls.append(job.id)
        if job.id == "hang":
            await asyncio.sleep(HANG)


def effect_counts(url: str) -> Counter[str]:
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            return Counter(connection.execute(select(effects.c.job)).scalars())
    finally:
        engine.dispose()


def build(url: str, jobs: Jobs, retries: int = 1, mode: str = "transaction") -> Messaging:
    create_tables(url, metadata)
    messaging = Messaging(
        handlers=[jobs],
        channels=[SqlChannel("jobs", mode=mode)],
        database=url,
        retry=RetryPolicy(retries=retries, initial_delay=0, jitter=0),
    )
    messaging.setup()
    return messaging


@pytest.mark.parametrize("runner", ["run", "arun"])
@pytest.mark.timeout(120, method="thread")  # leaves SIGALRM to the worker (def under arun)
async def test_hanging_handlers_are_timed_out_retried_then_dead_lettered(database_url, runner):
    jobs = Jobs()
    messaging = build(database_url, jobs)
    bus = messaging.gateway(JobBus)
    with messaging.transaction():  # one commit: one batch
        for job in (Job("a"), Job("b"), Job("hang"), AsyncJob("c"), AsyncJob("hang")):
            bus.send(job)
        bus.send(Job("d"))
        bus.send(AsyncJob("e"))
    try:
        if runner == "run":
            result = await asyncio.to_thread(messaging.run, "jobs", handler_timeout=0.5)
        else:
            result = await messaging.arun("jobs", handler_timeout=0.5)

        assert (result.handled, result.failed) == (9, 4)  # 7 messages and 2 retries
        assert jobs.calls.count("hang") == 2 and jobs.async_calls.count("hang") == 2
        assert sorted(job for job in jobs.async_calls if job != "hang") == ["c", "e"]
        letters = sorted(messaging.dead_letters.list(), key=lambda letter: letter.handler or "")
        assert [(letter.handler, letter.attempts) for letter in letters] == [
            (f"{__name__}.Jobs.awork", 2),
            (f"{__name__}.Jobs.work", 2),
        ]
        for letter in letters:
            assert letter.error_type == "busway.errors.HandlerTimeout"
            assert letter.handler in letter.error_message
            assert "0.5s" in letter.error_message
        assert messaging.channel("jobs").depth() == 0
    finally:
        jobs.release.set()
    for _ in range(2):  # the hanging def handlers end at last: nothing of theirs commits
        assert await asyncio.to_thread(jobs.ended.acquire, True, HANG)
    await asyncio.to_thread(join_abandoned_handlers)
    assert effect_counts(database_url) == {"a": 1, "b": 1, "d": 1}
    await messaging.aclose()


def test_sqlite_writes_go_on_while_a_def_handler_hangs(tmp_path):
    """The hanging handler's batch held SQLite's write lock; past the limit it is released,
    so the application's own send, blocked meanwhile, succeeds."""
    url = f"sqlite:///{tmp_path / 'busway.db'}"
    jobs = Jobs()
    messaging = build(url, jobs, retries=0)
    bus = messaging.gateway(JobBus)
    bus.send(Job("hang"))
    results = []
    worker = threading.Thread(
        target=lambda: results.append(messaging.run("jobs", until_empty=False, limit=2))
    )
    worker.start()
    try:
        assert jobs.hanging.wait(HANG)
        bus.send(Job("late"))  # the handler still hangs: this waits for the write lock
        worker.join(HANG)
        assert not worker.is_alive()
    finally:
        jobs.release.set()
        worker.join(HANG)
    assert (results[0].handled, results[0].failed) == (2, 1)
    (letter,) = messaging.dead_letters.list()
    assert letter.error_type == "busway.errors.HandlerTimeout"
    assert jobs.ended.acquire(timeout=HANG)
    join_abandoned_handlers()
    assert effect_counts(url) == {"late": 1}
    messaging.close()


def join_abandoned_handlers() -> None:
    for thread in threading.enumerate():
        if thread.name.startswith("busway-handler"):
            thread.join(HANG)
            assert not thread.is_alive()


def test_an_abandoned_def_handler_commits_nothing_of_its_own_transaction(database_url):
    """In lease mode the handler has a transaction of its own, not the batch's: when it
    returns at last, long after its message was dealt with, that transaction rolls back."""
    jobs = Jobs()
    messaging = build(database_url, jobs, retries=0, mode="lease")
    messaging.gateway(JobBus).send(Job("hang"))
    messaging.gateway(JobBus).send(Job("next"))
    try:
        result = messaging.run("jobs")
    finally:
        jobs.release.set()
    assert (result.handled, result.failed) == (2, 1)
    join_abandoned_handlers()
    assert effect_counts(database_url) == {"next": 1}
    assert messaging.channel("jobs").depth() == 0
    (letter,) = messaging.dead_letters.list()
    assert letter.error_type == "busway.errors.HandlerTimeout"
    messaging.close()


ENDLESS = {
    "sqlite": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
    "SELECT COUNT(*) FROM c",
    "postgresql": f"SELECT pg_sleep({HANG})",
    "mysql": f"SELECT SLEEP({HANG})",
}


@pytest.mark.parametrize("mode", ["transaction", "lease"])
def test_a_def_handler_stuck_in_a_statement_has_its_session_ended(database_url, mode):
    """Closing the connection alone would leave the server running the statement, the
    transaction and its locks in place: the message could be neither retried nor claimed."""
    calls = []

    @command_handler
    @handler_timeout(0.5)
    def stuck(job: Job, session: Session) -> None:
        calls.append(job.id)
        session.execute(insert(effects).values(job=job.id))
        if job.id == "stuck":
            session.execute(text(ENDLESS[session.get_bind().dialect.name]))

    create_tables(database_url, metadata)
    messaging = Messaging(
        handlers=[stuck],
        channels=[SqlChannel("jobs", mode=mode)],
        database=database_url,
        retry=RetryPolicy(retries=0),
    )
    messaging.setup()
    messaging.gateway(JobBus).send(Job("stuck"))
    messaging.gateway(JobBus).send(Job("next"))
    result = messaging.run("jobs")
    assert (result.handled, result.failed) == (2, 1)
    assert calls.count("stuck") == 1
    (letter,) = messaging.dead_letters.list()
    assert letter.error_type == "busway.errors.HandlerTimeout"
    join_abandoned_handlers()
    assert effect_counts(database_url) == {"next": 1}
    assert messaging.channel("jobs").depth() == 0
    messaging.close()
