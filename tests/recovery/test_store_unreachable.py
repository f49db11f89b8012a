"""The dead letter store unreachable: the message stays on its channel until it can be stored."""

import logging
import threading

import pytest
from recovery_app import Job, JobBus, Jobs
from recovery_support import effect_counts, execute, make_tables, wait_until, waiting

from busway import InMemoryChannel, RetryPolicy, SetupRequired, SqlChannel
from busway.testing import FakeClock

RETRY = RetryPolicy(retries=1, initial_delay=5, jitter=0)


def channel_of(kind):
    return InMemoryChannel("jobs") if kind == "memory" else SqlChannel("jobs", mode=kind)


def attempt_waiting(messaging, database_url, kind):
    """The attempt count of the one message waiting on ``jobs``."""
    if kind == "memory":
        channel = messaging.channel("jobs")
        assert channel.depth() == 1
        attempts = []

        def peek(delivery):
            attempts.append(delivery.envelope.headers.get("busway.attempt"))
            raise LookupError("only looking")

        with pytest.raises(LookupError):
            channel.consume(peek, 1, 0)
        return attempts[0]
    (row,) = waiting(database_url)
    return row.headers.get("busway.attempt")


@pytest.mark.parametrize("kind", ["transaction", "lease", "memory"])
def test_with_the_store_gone_the_last_failure_leaves_the_message_on_its_channel(
    make_messaging, database_url, kind
):
    make_tables(database_url)
    clock = FakeClock()
    jobs = Jobs()
    messaging = make_messaging([jobs], [channel_of(kind)], clock=clock, retry=RETRY)
    messaging.gateway(JobBus).send(Job("fail-1"))
    assert messaging.run("jobs").failed == 1
    clock.advance(5)  # the last retry is due

    execute(database_url, "DROP TABLE busway_dead_letters")
    with pytest.raises(SetupRequired, match="busway_dead_letters"):
        messaging.run("jobs")  # the run stops on the error: it does not lose the message

    # A SqlChannel's claim reads the store (its letters hold their keys back): it stops before
    # the handler runs again; another channel stops at the letter it cannot store.
    assert jobs.calls == ["fail-1"] * (1 if kind != "memory" else 2)
    assert messaging.channel("jobs").depth() == 1
    assert attempt_waiting(messaging, database_url, kind) == 1  # the failure left no trace
    assert effect_counts(database_url) == {}

    messaging.setup()  # the store is back
    result = messaging.run("jobs")  # and the message is due at once, not after a lease

    assert (result.handled, result.failed) == (1, 1)
    (letter,) = messaging.dead_letters.list()
    assert (letter.error_message, letter.attempts) == ("fail-1", 2)
    assert messaging.channel("jobs").depth() == 0
    assert effect_counts(database_url) == {}


async def test_with_the_store_gone_an_asyncio_worker_leaves_the_message_too(
    make_messaging, database_url
):
    make_tables(database_url)
    jobs = Jobs()
    messaging = make_messaging([jobs], [SqlChannel("jobs")], retry=RetryPolicy(retries=0))
    await messaging.gateway(JobBus).asend(Job("ok-1"))
    await messaging.gateway(JobBus).asend(Job("fail-1"))

    execute(database_url, "DROP TABLE busway_dead_letters")
    with pytest.raises(SetupRequired, match="busway_dead_letters"):
        await messaging.arun("jobs")

    # One transaction claimed both: the handled one rolled back with the failed one's.
    assert messaging.channel("jobs").depth() == 2
    assert effect_counts(database_url) == {}

    messaging.setup()
    result = await messaging.arun("jobs")

    assert (result.handled, result.failed) == (2, 1)
    assert effect_counts(database_url) == {"ok-1": 1}
    assert [letter.error_message for letter in messaging.dead_letters.list()] == ["fail-1"]
    assert messaging.channel("jobs").depth() == 0


def test_a_claim_that_fails_is_retried_on_a_later_pass(app, database_url, caplog, monkeypatch):
    monkeypatch.setattr("busway.worker.state.FIRST_OUTAGE_PAUSE", 0.05)
    jobs = Jobs()
    messaging = app(jobs=jobs)
    execute(database_url, "DROP TABLE busway_messages")  # the channel's table is unreachable
    worker = messaging.worker("jobs", until_empty=False, poll_interval=0.05)
    outcome = {}

    def run():
        try:
            outcome["result"] = worker.run()
        except Exception as error:
            outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    try:
        wait_until(
            lambda: "error" in outcome or any(r.levelno >= logging.WARNING for r in caplog.records),
            "the claim fails",
        )
        messaging.setup()  # reachable again
        messaging.gateway(JobBus).send(Job("j-1"))
        wait_until(lambda: jobs.calls or "error" in outcome, "the worker handles the message")
    finally:
        worker.stop()
        thread.join(30)

    assert "error" not in outcome, outcome
    assert jobs.calls == ["j-1"]
