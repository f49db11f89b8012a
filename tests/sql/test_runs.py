"""Runs of a key in one batch (``busway.sql.runs``): while its consumers are held back by the
others' keys, a PostgreSQL claim takes the messages that follow each first message of a key
too, and a key's run stops at the first of its messages that does not go through."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from test_ordering import Recorder, Steps, messaging_of, send_steps

from busway import RetryPolicy, SqlChannel
from busway.channels.base import current_batch
from busway.sql.runs import RUN, with_runs
from busway.testing import FakeClock


def row(seq: int, key: str | None, position: int | None = None, available_at: int = 0):
    place = seq if position is None else position
    return SimpleNamespace(seq=seq, ordering_key=key, position=place, available_at=available_at)


def seqs(rows) -> list[int]:
    return [row.seq for row in rows]


def test_the_heads_come_first_then_each_keys_next_messages_in_turn():
    heads = [row(1, "a"), row(2, "b"), row(3, None)]
    followers = [row(4, "a"), row(5, "b"), row(6, "a"), row(7, "b"), row(8, "a"), row(9, "a")]
    assert seqs(with_runs(heads, followers, 100, now=0)) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert len(with_runs(heads, followers, 100, now=0)) == 3 + 2 * (RUN - 1) - 1
    assert seqs(with_runs(heads, followers, 5, now=0)) == [1, 2, 3, 4, 5]


def test_a_run_ends_at_its_first_message_not_due_and_follows_the_keys_places():
    heads = [row(1, "a"), row(2, "b")]
    followers = [
        row(3, "a", available_at=50),  # a delayed message: the ones after it wait with it
        row(4, "a"),
        row(6, "b"),
        row(9, "b", position=5),  # sent again to keep the place 5: before 6
    ]
    assert seqs(with_runs(heads, followers, 100, now=10)) == [1, 2, 9, 6]


def test_a_key_with_a_message_placed_before_its_head_takes_no_followers():
    heads = [row(10, "a")]
    followers = [row(11, "a"), row(12, "a", position=4)]
    assert seqs(with_runs(heads, followers, 100, now=0)) == [10]


@pytest.fixture
def held_back():
    """Make the claims of a messaging's channel ``jobs`` take runs, as when held back."""

    def hold(messaging) -> None:
        messaging.channel("jobs")._consumer.windowed_until = time.monotonic() + 600

    return hold


class BatchRecorder(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[object] = []
        """The batch each message was handed out in (kept: ids of freed ones are reused)."""

    def note(self, key: str, n: int) -> None:
        super().note(key, n)
        self.batches.append(current_batch.get())


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_held_back_a_claim_takes_each_keys_next_messages_in_one_batch(make_messaging, held_back):
    recorder = BatchRecorder()
    messaging = messaging_of(make_messaging, recorder, SqlChannel("jobs", batch_size=8))
    send_steps(messaging.gateway(Steps), "ab", 4)
    held_back(messaging)

    assert messaging.run("jobs").handled == 8

    assert recorder.of("a") == [0, 1, 2, 3]
    assert recorder.of("b") == [0, 1, 2, 3]
    assert len({id(batch) for batch in recorder.batches}) == 1  # two heads, then their runs


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_delayed_retry_ends_its_keys_run_and_keeps_its_place(make_messaging, held_back):
    clock = FakeClock()
    recorder = Recorder()
    retry = RetryPolicy(retries=1, initial_delay=5, jitter=0)
    channel = SqlChannel("jobs", batch_size=8)
    messaging = messaging_of(make_messaging, recorder, channel, clock=clock, retry=retry)
    recorder.failing[("a", 0)] = 1
    send_steps(messaging.gateway(Steps), "ab", 4)
    held_back(messaging)

    messaging.run("jobs")
    assert recorder.of("a") == []  # a/1 to a/3 were in the batch, and stayed behind a/0
    assert recorder.of("b") == [0, 1, 2, 3]
    clock.advance(5)
    messaging.run("jobs")

    assert recorder.of("a") == [0, 1, 2, 3]
    assert messaging.channel("jobs").depth() == 0


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_dead_letter_ends_its_keys_run_and_holds_the_rest_back(make_messaging, held_back):
    recorder = Recorder()
    messaging = messaging_of(make_messaging, recorder, SqlChannel("jobs", batch_size=8))
    recorder.failing[("a", 1)] = -1
    send_steps(messaging.gateway(Steps), "ab", 4)
    held_back(messaging)

    messaging.run("jobs")

    assert recorder.of("a") == [0]
    assert recorder.of("b") == [0, 1, 2, 3]
    [blocked] = messaging.dead_letters.blocked()
    assert (blocked.ordering_key, blocked.waiting) == ("a", 2)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_channel_of_priorities_takes_no_runs(make_messaging, held_back):
    recorder = BatchRecorder()
    channel = SqlChannel("jobs", batch_size=8, priorities=True)
    messaging = messaging_of(make_messaging, recorder, channel)
    send_steps(messaging.gateway(Steps), "ab", 4)
    held_back(messaging)

    assert messaging.run("jobs").handled == 8

    assert recorder.of("a") == [0, 1, 2, 3]
    assert len({id(batch) for batch in recorder.batches}) == 4  # one message of each key each
