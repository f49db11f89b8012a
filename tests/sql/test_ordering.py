"""Ordering keys, sequenced dead letters and priorities on a SqlChannel, on each database."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass

import pytest
from sqlalchemy import create_engine, func, select, update

from busway import (
    CommandBus,
    Messaging,
    RetryPolicy,
    SqlChannel,
    asynchronous,
    command_handler,
    ordered_by,
    priority,
)
from busway.channels.base import Channel, Envelope, current_batch
from busway.ordering import MAX_PRIORITY, BlockedKey
from busway.testing import FakeClock
from dbsupport import sync_url


@dataclass
class Step:
    key: str
    n: int


@ordered_by("account")
@dataclass
class Debit:
    account: str
    n: int


@asynchronous("jobs")
class Steps(CommandBus):
    pass


@priority(7)
@asynchronous("jobs")
class Urgent(CommandBus):
    pass


class Recorder:
    """Notes each message handled, in the order handled; fails those in ``failing``."""

    def __init__(self) -> None:
        self.handled: list[tuple[str, int]] = []
        self.failing: dict[tuple[str, int], int] = {}
        """How many more times each (key, n) fails; -1: until told otherwise."""
        self.lock = threading.Lock()

    def note(self, key: str, n: int) -> None:
        with self.lock:
            left = self.failing.get((key, n), 0)
            if left:
                self.failing[(key, n)] = left - 1 if left > 0 else left
                raise RuntimeError(f"{key}/{n} fails")
            self.handled.append((key, n))

    @command_handler
    def step(self, command: Step) -> None:
        self.note(command.key, command.n)

    @command_handler
    def debit(self, command: Debit) -> None:
        self.note(command.account, command.n)

    def of(self, key: str) -> list[int]:
        return [n for handled_key, n in self.handled if handled_key == key]


def messaging_of(make_messaging, recorder, channel=None, **options) -> Messaging:
    options.setdefault("retry", RetryPolicy(retries=0))
    return make_messaging([recorder], [channel or SqlChannel("jobs", batch_size=10)], **options)


def send_steps(bus: CommandBus, keys: str, count: int) -> None:
    for n in range(count):
        for key in keys:
            bus.send(Step(key, n), ordering_key=key)


# -- order per key ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["run", "arun"])
def test_each_keys_messages_are_handled_in_the_order_sent_by_four_consumers(make_messaging, path):
    recorder = Recorder()
    messaging = messaging_of(make_messaging, recorder)
    keys = [f"k{index}" for index in range(30)]
    bus = messaging.gateway(Steps)
    for n in range(20):
        for key in keys:
            bus.send(Step(key, n), ordering_key=key)

    if path == "run":
        result = messaging.run("jobs", concurrency=4)
    else:
        result = asyncio.run(messaging.arun("jobs", concurrency=4))

    assert result.handled == 600
    for key in keys:
        assert recorder.of(key) == list(range(20)), key


def test_a_key_declared_on_the_payload_type_orders_its_messages(make_messaging):
    recorder = Recorder()
    messaging = messaging_of(make_messaging, recorder)
    bus = messaging.gateway(Steps)
    recorder.failing[("acct-1", 0)] = 1
    for n in range(3):
        bus.send(Debit("acct-1", n))
        bus.send(Debit("acct-2", n))

    messaging.run("jobs")

    assert recorder.of("acct-2") == [0, 1, 2]
    assert recorder.of("acct-1") == []  # its first debit is dead-lettered: the key waits
    assert messaging.dead_letters.blocked() == [
        BlockedKey("jobs", "acct-1", (messaging.dead_letters.list()[0].id,), 2)
    ]


def test_messages_without_a_key_are_not_held_back_by_keyed_ones(make_messaging):
    clock = FakeClock()
    recorder = Recorder()
    messaging = messaging_of(
        make_messaging, recorder, clock=clock, retry=RetryPolicy(retries=1, initial_delay=5)
    )
    bus = messaging.gateway(Steps)
    recorder.failing[("k", 0)] = 1
    bus.send(Step("k", 0), ordering_key="k")
    bus.send(Step("k", 1), ordering_key="k")
    bus.send(Step("free", 0))
    bus.send(Step("free", 1))

    messaging.run("jobs")

    assert recorder.handled == [("free", 0), ("free", 1)]


@pytest.mark.parametrize("mode", ["transaction", "lease"])
def test_a_delayed_retry_keeps_its_place_before_the_later_messages_of_its_key(make_messaging, mode):
    clock = FakeClock()
    recorder = Recorder()
    retry = RetryPolicy(retries=2, initial_delay=5, jitter=0)
    channel = SqlChannel("jobs", batch_size=10, mode=mode)
    messaging = messaging_of(make_messaging, recorder, channel, clock=clock, retry=retry)
    recorder.failing[("a", 0)] = 2
    send_steps(messaging.gateway(Steps), "ab", 3)

    messaging.run("jobs")
    assert recorder.of("b") == [0, 1, 2]
    assert recorder.of("a") == []
    clock.advance(5)
    messaging.run("jobs")
    assert recorder.of("a") == []  # failed again: now due in 10 s, still first of its key
    clock.advance(10)
    messaging.run("jobs")

    assert recorder.of("a") == [0, 1, 2]
    assert messaging.channel("jobs").depth() == 0


def test_a_long_key_orders_like_a_short_one(make_messaging):
    recorder = Recorder()
    messaging = messaging_of(make_messaging, recorder)
    long_key = "order/" + "x" * 500
    recorder.failing[(long_key, 0)] = 1
    bus = messaging.gateway(Steps)
    for n in range(3):
        bus.send(Step(long_key, n), ordering_key=long_key)

    messaging.run("jobs")

    assert recorder.handled == []
    [blocked] = messaging.dead_letters.blocked()
    assert (blocked.ordering_key, blocked.waiting) == (long_key, 2)


# -- sequenced dead letters ---------------------------------------------------------------


def dead_letter_third_of_k(make_messaging, mode="transaction") -> tuple[Messaging, Recorder]:
    """K's third message fails for good; K's fourth and fifth wait, other keys go on."""
    recorder = Recorder()
    messaging = messaging_of(make_messaging, recorder, SqlChannel("jobs", mode=mode))
    recorder.failing[("K", 2)] = -1
    send_steps(messaging.gateway(Steps), "KLM", 5)

    messaging.run("jobs")

    assert recorder.of("K") == [0, 1]
    assert recorder.of("L") == recorder.of("M") == [0, 1, 2, 3, 4]
    [letter] = messaging.dead_letters.list()
    assert messaging.dead_letters.blocked() == [BlockedKey("jobs", "K", (letter.id,), 2)]
    assert messaging.run("jobs").handled == 0  # K waits, however often a worker looks
    return messaging, recorder


@pytest.mark.parametrize("mode", ["transaction", "lease"])
def test_the_later_messages_of_a_dead_lettered_key_wait_until_it_is_replayed(make_messaging, mode):
    messaging, recorder = dead_letter_third_of_k(make_messaging, mode)
    bus = messaging.gateway(Steps)
    bus.send(Step("K", 5), ordering_key="K")  # sent while K waits: it waits too
    bus.send(Step("L", 5), ordering_key="L")
    messaging.run("jobs")
    assert recorder.of("K") == [0, 1]
    assert recorder.of("L")[-1] == 5

    recorder.failing[("K", 2)] = 0  # the handler is fixed
    [letter] = messaging.dead_letters.list()
    assert messaging.dead_letters.replay([letter.id]) == 1
    messaging.run("jobs")

    assert recorder.of("K") == [0, 1, 2, 3, 4, 5]
    assert messaging.dead_letters.blocked() == []
    assert messaging.channel("jobs").depth() == 0


def test_a_replayed_letter_that_fails_again_holds_its_key_back_again(make_messaging):
    messaging, recorder = dead_letter_third_of_k(make_messaging)
    [letter] = messaging.dead_letters.list()

    messaging.dead_letters.replay([letter.id])
    messaging.run("jobs")

    assert recorder.of("K") == [0, 1]
    [again] = messaging.dead_letters.list()
    assert messaging.dead_letters.blocked() == [BlockedKey("jobs", "K", (again.id,), 2)]


def test_skipping_the_letter_lets_the_later_messages_of_its_key_go_on(make_messaging):
    messaging, recorder = dead_letter_third_of_k(make_messaging)
    [letter] = messaging.dead_letters.list()

    assert messaging.dead_letters.skip([letter.id]) == 1
    messaging.run("jobs")

    assert recorder.of("K") == [0, 1, 3, 4]
    assert messaging.dead_letters.list() == []
    assert messaging.channel("jobs").depth() == 0


# -- priorities ---------------------------------------------------------------------------


def send_mixed(bus: CommandBus) -> None:
    for name, level in [("a", 0), ("b", 5), ("c", 0), ("d", 9), ("e", 5), ("f", 0)]:
        bus.send(Step(name, level), priority=level)


def test_a_backlog_comes_out_higher_priority_first_and_fifo_within_a_priority(make_messaging):
    recorder = Recorder()
    channel = SqlChannel("jobs", batch_size=2, priorities=True)
    messaging = messaging_of(make_messaging, recorder, channel)
    bus = messaging.gateway(Steps)
    send_mixed(bus)
    messaging.gateway(Urgent).send(Step("g", 7))

    messaging.run("jobs")

    assert [name for name, _ in recorder.handled] == ["d", "g", "b", "e", "a", "c", "f"]


def test_a_channel_without_priorities_stays_fifo(make_messaging):
    recorder = Recorder()
    messaging = messaging_of(make_messaging, recorder, SqlChannel("jobs", batch_size=2))
    send_mixed(messaging.gateway(Steps))

    messaging.run("jobs")

    assert [name for name, _ in recorder.handled] == ["a", "b", "c", "d", "e", "f"]


def test_a_keys_order_wins_over_priority(make_messaging):
    recorder = Recorder()
    channel = SqlChannel("jobs", batch_size=1, priorities=True)
    messaging = messaging_of(make_messaging, recorder, channel)
    bus = messaging.gateway(Steps)
    bus.send(Step("k", 0), ordering_key="k", priority=0)
    bus.send(Step("k", 1), ordering_key="k", priority=MAX_PRIORITY)
    bus.send(Step("x", 0), priority=5)

    messaging.run("jobs")

    assert recorder.handled == [("x", 0), ("k", 0), ("k", 1)]


@pytest.mark.parametrize(
    ("level", "error"), [(10, ValueError), (-1, ValueError), ("high", TypeError)]
)
def test_a_priority_out_of_bounds_is_refused_at_the_send(make_messaging, level, error):
    messaging = messaging_of(make_messaging, Recorder())
    with pytest.raises(error, match="a priority is an integer from 0 to 9"):
        messaging.gateway(Steps).send(Step("a", 0), priority=level)
    assert messaging.channel("jobs").depth() == 0


def test_an_ordering_key_that_is_not_text_or_a_number_is_refused(make_messaging):
    messaging = messaging_of(make_messaging, Recorder())
    with pytest.raises(TypeError, match="an ordering key is a str or an int"):
        messaging.gateway(Steps).send(Step("a", 0), ordering_key=("a", 1))  # type: ignore[arg-type]
    assert messaging.channel("jobs").depth() == 0


# -- through an outbox relay --------------------------------------------------------------


@asynchronous("outbox", "far")
class Relayed(CommandBus):
    """Committed to the outbox, then relayed to the far channel."""


def test_a_row_a_relay_keeps_back_holds_back_the_later_rows_of_its_key_only(make_messaging):
    """The far channel refuses K's second message: K's third must not be relayed past it,
    while the other keys' rows go on; once it is taken, K's rows follow in order."""
    clock = FakeClock()
    far = FarChannel()
    messaging = make_messaging([Recorder()], [SqlChannel("outbox"), far], clock=clock)
    bus = messaging.gateway(Relayed)
    with messaging.transaction():
        for n in range(3):
            for key in "KL":
                bus.send(Step(key, n), ordering_key=key)
    far.refuse = {'"K","n":1'}

    with pytest.raises(Refused):
        messaging.run("outbox")
    assert messaging.run("outbox").handled == 1  # L's last; K's second is kept back a while
    assert messaging.run("outbox").handled == 0  # and K's third waits behind it
    assert far.received == [("K", 0), ("L", 0), ("L", 1), ("L", 2)]
    assert messaging.channel("outbox").depth() == 2

    far.refuse = set()
    clock.advance(60)
    messaging.run("outbox")
    assert [n for key, n in far.received if key == "K"] == [0, 1, 2]
    assert messaging.channel("outbox").depth() == 0


class Refused(Exception):
    pass


class FarChannel(Channel):
    """Takes a batch's sends when it is about to be acknowledged, refusing those whose body
    holds a text of ``refuse``: a stand-in for a broker that confirms a batch's sends (the
    relays to real brokers are in the broker tests)."""

    def __init__(self) -> None:
        self.name = "far"
        self.received: list[tuple[str, int]] = []
        self.refuse: set[str] = set()

    def send(self, envelope: Envelope) -> None:
        batch = current_batch.get()
        assert batch is not None
        source = batch.current

        def settle() -> None:
            body = envelope.body.decode()
            if any(refused in body for refused in self.refuse):
                raise batch.unsent([(source, Refused(body))])
            step = json.loads(body)
            self.received.append((step["key"], step["n"]))

        batch.before_ack.append(settle)

    def consume(self, handle: object, max_messages: int, wait: float) -> int:
        return 0


def test_a_keyed_message_whose_headers_cannot_be_read_holds_its_key_back(
    make_messaging, database_url
):
    recorder = Recorder()
    channel = SqlChannel("jobs", batch_size=10)
    messaging = messaging_of(make_messaging, recorder, channel)
    send_steps(messaging.gateway(Steps), "KL", 3)
    engine = create_engine(sync_url(database_url))
    try:
        with engine.begin() as connection:
            table = channel.table
            first = select(func.min(table.c.seq)).where(table.c.ordering_key == "K")
            connection.execute(
                update(table).where(table.c.seq == first.scalar_subquery()).values(headers="{")
            )
    finally:
        engine.dispose()

    messaging.run("jobs")

    assert recorder.of("K") == [] and recorder.of("L") == [0, 1, 2]
    [letter] = messaging.dead_letters.list()
    assert messaging.dead_letters.blocked() == [BlockedKey("jobs", "K", (letter.id,), 2)]
    messaging.dead_letters.skip([letter.id])
    messaging.run("jobs")
    assert recorder.of("K") == [1, 2]
