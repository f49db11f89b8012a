"""Deduplication on real databases: the same message delivered twice takes effect once, one
after the other or at the same moment to two worker processes; custom keys; turning it off;
forgetting old records."""

import pytest
from recovery_app import Job, JobBus, Jobs
from recovery_support import (
    Process,
    busway,
    effect_counts,
    effects,
    environment,
    execute,
    make_tables,
    start,
    wait_until,
)
from sqlalchemy import create_engine, text

from busway import InMemoryChannel, SqlChannel, command_handler
from busway.testing import record
from dbsupport import sync_url
from markers import write_atomically

DAY = 86_400


def channel_of(kind):
    return InMemoryChannel("jobs") if kind == "memory" else SqlChannel("jobs", mode=kind)


def send(messaging, job, headers=None):
    """Send ``job`` to ``jobs``; its envelope, to deliver it again."""
    with record(messaging) as recorded:
        messaging.gateway(JobBus).send(job, headers)
    (envelope,) = recorded.envelopes("jobs")
    return envelope


def inbox_size(url):
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT COUNT(*) FROM busway_inbox")).scalar_one()
    finally:
        engine.dispose()


@pytest.mark.parametrize("kind", ["transaction", "lease", "memory"])
def test_the_same_message_delivered_twice_takes_effect_once(make_messaging, database_url, kind):
    make_tables(database_url)
    jobs = Jobs()
    messaging = make_messaging([jobs], [channel_of(kind)])
    channel = messaging.channel("jobs")

    first = send(messaging, Job("a"))
    assert messaging.run("jobs").handled == 1
    channel.send(first)  # delivered again, one after the other, alone in its batch
    assert messaging.run("jobs").handled == 1
    second = send(messaging, Job("b"))
    channel.send(second)  # twice in one batch
    result = messaging.run("jobs")

    assert (result.handled, result.failed) == (2, 0)
    assert effect_counts(database_url) == {"a": 1, "b": 1}
    assert inbox_size(database_url) == 2
    assert channel.depth() == 0
    assert messaging.dead_letters.list() == []


def test_without_deduplication_a_duplicate_takes_effect_again(make_messaging, database_url):
    make_tables(database_url)
    jobs = Jobs()
    messaging = make_messaging([jobs], [SqlChannel("jobs")], deduplication=False)

    messaging.channel("jobs").send(send(messaging, Job("a")))
    messaging.run("jobs")

    assert jobs.calls == ["a", "a"]
    assert effect_counts(database_url) == {"a": 2}
    assert inbox_size(database_url) == 0


def test_deduplicated_by_a_header(make_messaging, database_url):
    make_tables(database_url)
    jobs = Jobs()
    messaging = make_messaging(
        [jobs], [SqlChannel("jobs")], deduplicate_by="header:idempotency-key"
    )

    send(messaging, Job("a"), {"idempotency-key": "k-1"})
    send(messaging, Job("b"), {"idempotency-key": "k-1"})  # another message, the same key
    send(messaging, Job("c"), {"idempotency-key": "k-2"})
    keyless = send(messaging, Job("d"))
    messaging.channel("jobs").send(keyless)  # without the header: keyed by its id
    messaging.run("jobs")

    assert jobs.calls == ["a", "c", "d"]
    assert effect_counts(database_url) == {"a": 1, "c": 1, "d": 1}


def test_deduplicated_by_a_payload_field(make_messaging, database_url):
    make_tables(database_url)
    jobs = Jobs()
    messaging = make_messaging([jobs], [SqlChannel("jobs")], deduplicate_by="payload:id")

    send(messaging, Job("a"))
    send(messaging, Job("a"))  # two messages, one order
    send(messaging, Job("b"))
    messaging.run("jobs")

    assert jobs.calls == ["a", "b"]
    assert effect_counts(database_url) == {"a": 1, "b": 1}


# -- at the same moment, in two worker processes --------------------------------------------


def waiting_on_a_lock(url):
    """Whether a session of this database waits for a lock another one holds."""
    engine = create_engine(sync_url(url))
    query = (
        "SELECT COUNT(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        if url.startswith("postgresql")
        else "SELECT COUNT(*) FROM information_schema.innodb_trx t "
        "JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id "
        "WHERE t.trx_state = 'LOCK WAIT' AND p.db = DATABASE()"
    )
    try:
        with engine.connect() as connection:
            return connection.execute(text(query)).scalar_one() > 0
    finally:
        engine.dispose()


def test_two_workers_given_the_same_message_at_once_take_effect_once(app, database_url, tmp_path):
    messaging = app()
    envelope = send(messaging, Job("x"))
    messaging.channel("jobs").send(envelope)
    marker, release, ready = tmp_path / "marker", tmp_path / "release", tmp_path / "ready"
    cli = ("run", "jobs", "--until-empty", "--app", "recovery_app:messaging")
    settings = {"url": database_url, "batch": 1}
    first = start(
        tmp_path,
        environment(**settings, worker="first", pause="handler", marker=marker, release=release),
        *cli,
        name="first",
    )
    workers: list[Process] = [first]
    try:
        # The first worker is inside the handler: its writes are made, not committed.
        wait_until(marker.exists, "the first worker is inside the handler", (first,))
        second = start(
            tmp_path,
            environment(**settings, worker="second", ready=ready, go=ready),
            *cli,
            name="second",
        )
        workers.append(second)
        wait_until(ready.exists, "the second worker is ready", (second,))
        if not database_url.startswith("sqlite"):  # there, it waits for the write lock
            # The second takes the other copy at once (SKIP LOCKED); it either finishes,
            # or waits for the first's inbox record.
            wait_until(
                lambda: second.poll() is not None or waiting_on_a_lock(database_url),
                "the second worker has handled its copy or waits",
                (first,),
            )
        write_atomically(release, "go on")
        assert first.wait(30) == 0, first.err()
        assert second.wait(30) == 0, second.err()
    finally:
        for worker in workers:
            worker.stop()

    if not database_url.startswith("sqlite"):  # there, either may take the second copy
        handled = [worker.logs()[-1]["handled"] for worker in workers]
        assert handled == [1, 1]  # each took one copy, at the same time
    assert [job for job, _ in effects(database_url)] == ["x"]
    assert messaging.dead_letters.list() == []
    assert messaging.channel("jobs").depth() == 0


# -- forgetting old records ------------------------------------------------------------------


def age_inbox(url, seconds):
    execute(url, f"UPDATE busway_inbox SET handled_at = handled_at - {int(seconds * 1000)}")


def test_cleanup_forgets_old_records_and_then_a_duplicate_takes_effect_again(app, database_url):
    jobs = Jobs()
    messaging = app(jobs=jobs)
    old = send(messaging, Job("old"))
    recent = send(messaging, Job("recent"))
    messaging.run("jobs")
    age_inbox(database_url, 8 * DAY)
    send(messaging, Job("new"))
    messaging.run("jobs")

    assert messaging.cleanup_inbox(9 * DAY) == 0
    assert messaging.cleanup_inbox(7 * DAY) == 2  # "old" and "recent", handled 8 days ago
    assert inbox_size(database_url) == 1

    messaging.channel("jobs").send(old)
    messaging.channel("jobs").send(recent)
    messaging.run("jobs")

    # The retention caveat: a duplicate arriving after its record is gone takes effect again.
    assert effect_counts(database_url) == {"old": 2, "recent": 2, "new": 1}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # each process ~1 s
def test_busway_inbox_cleanup_keeps_seven_days_by_default(app, database_url, tmp_path):
    jobs = Jobs()
    messaging = app(jobs=jobs)
    old = send(messaging, Job("old"))
    messaging.run("jobs")
    age_inbox(database_url, 7 * DAY + 60)
    fresh = send(messaging, Job("fresh"))
    messaging.run("jobs")
    env = environment(url=database_url)
    cli = ("--app", "recovery_app:messaging")

    kept = busway(tmp_path, env, "inbox", "cleanup", "--older-than", "8d", *cli)
    cleaned = busway(tmp_path, env, "inbox", "cleanup", *cli)

    assert kept.stdout.strip() == "forgot 0 deduplication record(s)", kept.stderr
    assert cleaned.stdout.strip() == "forgot 1 deduplication record(s)", cleaned.stderr
    for envelope in (old, fresh):
        messaging.channel("jobs").send(envelope)
    messaging.run("jobs")
    # The batch finds fresh's record as it writes its own and is redone: calls repeat, effects
    # count once per record.
    assert effect_counts(database_url) == {"old": 2, "fresh": 1}


def test_a_key_longer_than_its_column_still_deduplicates(make_messaging, database_url):
    make_tables(database_url)
    jobs = Jobs()
    messaging = make_messaging([jobs], [SqlChannel("jobs")], deduplicate_by="payload:id")

    send(messaging, Job("a" * 300))
    send(messaging, Job("a" * 300))
    send(messaging, Job("a" * 299 + "b"))
    result = messaging.run("jobs")

    assert (result.handled, result.failed) == (3, 0)
    assert effect_counts(database_url) == {"a" * 300: 1, "a" * 299 + "b": 1}


@pytest.mark.parametrize("kind", ["transaction", "lease"])
async def test_a_def_handler_under_arun_takes_effect_once(make_messaging, database_url, kind):
    """A plain def handler on the asyncio path works through the claim's sync connection."""
    make_tables(database_url)
    messaging = make_messaging([Jobs()], [channel_of(kind)])
    channel = messaging.channel("jobs")

    first = send(messaging, Job("a"))
    channel.send(first)  # twice in one batch
    assert (await messaging.arun("jobs")).failed == 0
    channel.send(first)  # and again, alone
    assert (await messaging.arun("jobs")).failed == 0

    assert effect_counts(database_url) == {"a": 1}
    assert inbox_size(database_url) == 1


class AsyncJobs:
    def __init__(self) -> None:
        self.calls: list[str] = []

    @command_handler
    async def work(self, job: Job) -> None:
        self.calls.append(job.id)


def test_an_async_handler_in_a_sync_worker_takes_effect_once(make_messaging, database_url):
    jobs = AsyncJobs()
    messaging = make_messaging([jobs], [SqlChannel("jobs")])
    channel = messaging.channel("jobs")

    first = send(messaging, Job("a"))
    channel.send(first)  # twice in one batch
    messaging.run("jobs")
    channel.send(first)  # and again, alone
    messaging.run("jobs")

    assert jobs.calls == ["a"]
    assert inbox_size(database_url) == 1
