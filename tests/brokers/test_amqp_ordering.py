"""Ordering keys on RabbitMQ: a partitioned channel hands one key's messages out one at a time,
in order, to however many consumers in the process, and different partitions side by side."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from amqp_support import Broker, wait_until
from amqp_support import broker as broker  # fixtures: pytest finds them by name
from amqp_support import queues as queues
from amqp_support import rabbitmq_in_use as rabbitmq_in_use

from busway import EventBus, Messaging, RetryPolicy, asynchronous, event_handler, ordered_by
from busway.amqp import AmqpChannel
from busway.channels.base import Delivery, Envelope, MessageReturned
from busway.errors import ConfigurationError
from busway.message import ORDERING_KEY
from busway.testing import ChannelContract
from busway.testing.conformance import ChannelFactory, ContractCommands, Journal, Note

PARTITIONS = 4


@ordered_by("key")
@dataclass
class Step:
    key: str
    seq: int


@asynchronous("steps")
class Steps(EventBus):
    pass


class TestPartitionedAmqpChannel(ChannelContract):
    """The whole contract holds on partitions; FIFO holds for one key's messages."""

    @pytest.fixture
    def channel_factory(self, amqp_url: str, queues: Callable[..., str]) -> ChannelFactory:
        return lambda name: AmqpChannel(
            name, amqp_url, queue=queues(PARTITIONS), partitions=PARTITIONS
        )

    def test_fifo_for_one_consumer(self, messaging: Messaging, journal: Journal) -> None:
        bus = messaging.gateway(ContractCommands)
        for number in range(30):
            bus.send(Note(number), ordering_key="notes")

        messaging.run("contract")

        assert [note.number for note in journal.notes] == list(range(30))


@pytest.fixture
def partitioned(amqp_url: str, queues: Callable[..., str]) -> Iterator[Callable[..., AmqpChannel]]:
    """Make partitioned channels on a fresh queue (or ``queue=``), set up, closed at the end."""
    made: list[AmqpChannel] = []

    def make(**options: Any) -> AmqpChannel:
        options.setdefault("partitions", PARTITIONS)
        options.setdefault("queue", queues(options["partitions"]))
        channel = AmqpChannel("steps", amqp_url, **options)
        channel.setup()
        made.append(channel)
        return channel

    yield make
    for channel in made:
        channel.close()


def keyed(key: str, seq: int) -> Envelope:
    return Envelope(f"{key}/{seq}".encode(), {"id": str(uuid.uuid4()), ORDERING_KEY: key})


def read(delivery: Delivery) -> tuple[str, int]:
    key, seq = delivery.envelope.body.decode().split("/")
    return key, int(seq)


class Ledger:
    """What the handlers saw, and whether two of them ever held one key at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: dict[str, list[int]] = {}
        self.in_hand: set[str] = set()
        self.overlaps: list[str] = []
        self.most_at_once = 0

    def enter(self, key: str, seq: int) -> None:
        with self.lock:
            if key in self.in_hand:
                self.overlaps.append(f"{key}/{seq}")
            self.in_hand.add(key)
            self.most_at_once = max(self.most_at_once, len(self.in_hand))
            self.seen.setdefault(key, []).append(seq)

    def leave(self, key: str) -> None:
        with self.lock:
            self.in_hand.discard(key)

    def assert_in_order(self, keys: int, per_key: int) -> None:
        assert self.overlaps == []
        assert len(self.seen) == keys
        for key, seqs in self.seen.items():
            assert seqs == list(range(per_key)), key


# -- the queues ----------------------------------------------------------------------------


def test_a_keys_messages_all_go_to_one_partition_and_keys_spread_over_them(
    partitioned: Callable[..., AmqpChannel], broker: Broker
) -> None:
    channel = partitioned()
    for seq in range(5):
        channel.send(keyed("order-7", seq))
    counts = [broker.count(f"{channel.queue}.{index}") for index in range(PARTITIONS)]
    assert sorted(counts) == [0, 0, 0, 5]
    assert broker.count(channel.queue) is None  # no queue of the channel's own name

    for number in range(40):
        channel.send(keyed(f"key-{number}", 0))
    counts = [broker.count(f"{channel.queue}.{index}") or 0 for index in range(PARTITIONS)]
    assert sum(counts) == 45 and all(counts), counts
    assert channel.depth() == 45


def test_messages_without_a_key_spread_over_the_partitions(
    partitioned: Callable[..., AmqpChannel], broker: Broker
) -> None:
    channel = partitioned()
    for number in range(40):
        channel.send(Envelope(str(number).encode(), {"id": str(uuid.uuid4())}))
    counts = [broker.count(f"{channel.queue}.{index}") or 0 for index in range(PARTITIONS)]
    assert sum(counts) == 40 and all(counts), counts


def test_partition_queues_have_a_single_active_consumer(
    partitioned: Callable[..., AmqpChannel], broker: Broker
) -> None:
    channel = partitioned(partitions=2)
    for partition in (f"{channel.queue}.0", f"{channel.queue}.1"):
        assert broker.declares(partition, {"x-single-active-consumer": True})
        assert not broker.declares(partition, {})


def test_the_channel_says_whether_keyed_retries_wait_in_the_worker(amqp_url: str) -> None:
    assert AmqpChannel("a", amqp_url, partitions=3).holds_keyed_retries is True
    assert AmqpChannel("b", amqp_url).holds_keyed_retries is False


# -- handing out, within one process -------------------------------------------------------


def test_one_partition_is_handed_out_one_message_at_a_time(
    partitioned: Callable[..., AmqpChannel],
) -> None:
    channel = partitioned(partitions=1)
    for seq in range(3):
        channel.send(keyed("only", seq))
    inner: list[int] = []
    outer: list[tuple[str, int]] = []

    def handle(delivery: Delivery) -> None:
        outer.append(read(delivery))
        # Another consumer, while this one holds the partition's message: nothing for it.
        inner.append(channel.consume(lambda _: None, 10, 0.0))

    while channel.consume(handle, 10, 0.0):
        pass

    assert outer == [("only", 0), ("only", 1), ("only", 2)]
    assert inner == [0, 0, 0]


def test_partitions_are_handed_out_side_by_side(partitioned: Callable[..., AmqpChannel]) -> None:
    channel = partitioned(partitions=8)
    keys = [f"key-{number}" for number in range(40)]
    for key in keys:
        channel.send(keyed(key, 0))
    both_in_hand = threading.Barrier(2, timeout=20)
    waited: set[threading.Thread] = set()
    seen: list[str] = []
    errors: list[BaseException] = []

    def handle(delivery: Delivery) -> None:
        seen.append(read(delivery)[0])
        if threading.current_thread() not in waited:
            waited.add(threading.current_thread())
            both_in_hand.wait()  # returns once the other consumer holds a message too

    def consumer() -> None:
        try:
            while channel.consume(handle, 1, 0.5):
                pass
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=consumer) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert sorted(seen) == sorted(keys)


def test_a_message_given_back_comes_again_before_the_later_ones_of_its_partition(
    partitioned: Callable[..., AmqpChannel],
) -> None:
    channel = partitioned(partitions=1, prefetch=50)
    for seq in range(10):
        channel.send(keyed("k", seq))
    got: list[int] = []

    def returns_the_third(delivery: Delivery) -> None:
        if len(got) == 2:
            got.append(-1)
            raise MessageReturned
        got.append(read(delivery)[1])

    assert channel.consume(returns_the_third, 100, 0.0) == 2
    while channel.consume(lambda delivery: got.append(read(delivery)[1]), 100, 0.0):
        pass

    assert got == [0, 1, -1, *range(2, 10)]


def test_a_message_whose_handling_raised_comes_again_before_the_later_ones(
    partitioned: Callable[..., AmqpChannel],
) -> None:
    channel = partitioned(partitions=2, prefetch=50)
    for seq in range(20):
        channel.send(keyed("a", seq))
        channel.send(keyed("b", seq))
    got: dict[str, list[int]] = {"a": [], "b": []}
    failed: list[tuple[str, int]] = []

    def fails_now_and_then(delivery: Delivery) -> None:
        key, seq = read(delivery)
        if seq % 7 == 3 and (key, seq) not in failed:
            failed.append((key, seq))
            raise RuntimeError("the database went away")  # escapes: the message goes back
        got[key].append(seq)

    def consumer() -> None:
        while True:
            try:
                if not channel.consume(fails_now_and_then, 100, 0.5):
                    return
            except RuntimeError:
                continue

    threads = [threading.Thread(target=consumer) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert got == {"a": list(range(20)), "b": list(range(20))}
    assert sorted(failed) == [(key, seq) for key in "ab" for seq in (3, 10, 17)]


def test_a_consumer_that_stops_hands_its_partition_on_in_order(
    partitioned: Callable[..., AmqpChannel], amqp_url: str, broker: Broker
) -> None:
    first = partitioned(partitions=1, prefetch=10)
    for seq in range(30):
        first.send(keyed("k", seq))
    got: list[tuple[str, int]] = []
    assert first.consume(lambda delivery: got.append(("first", read(delivery)[1])), 5, 0.0) == 5
    # It holds the partition, 10 messages fetched behind those it handled, 15 more waiting.

    second = AmqpChannel("steps", amqp_url, queue=first.queue, partitions=1, prefetch=50)
    handled: list[int] = []
    waiting = threading.Thread(
        target=lambda: handled.append(
            second.consume(lambda delivery: got.append(("second", read(delivery)[1])), 100, 20)
        )
    )
    waiting.start()
    try:
        wait_until(lambda: broker.members(first.queue) == 2, "a second consumer")
        first.close()
        waiting.join()
    finally:
        second.close()

    assert handled == [25]
    assert got == [("first", seq) for seq in range(5)] + [("second", seq) for seq in range(5, 30)]


def test_run_with_concurrency_keeps_each_keys_order(
    amqp_url: str, queues: Callable[..., str]
) -> None:
    ledger = Ledger()

    @event_handler
    def step(event: Step) -> None:
        ledger.enter(event.key, event.seq)
        time.sleep(0.0005)  # a handler's work, long enough for the threads to overlap
        ledger.leave(event.key)

    channel = AmqpChannel("steps", amqp_url, queue=queues(8), partitions=8, prefetch=20)
    messaging = Messaging(handlers=[step], channels=[channel])
    messaging.setup()
    try:
        steps = messaging.gateway(Steps)
        for seq in range(15):
            for number in range(30):
                steps.publish(Step(f"key-{number}", seq))

        result = messaging.run("steps", concurrency=4)
    finally:
        messaging.close()

    assert result.handled == 450
    ledger.assert_in_order(keys=30, per_key=15)
    assert ledger.most_at_once > 1


def test_arun_with_concurrency_keeps_each_keys_order(
    amqp_url: str, queues: Callable[..., str]
) -> None:
    ledger = Ledger()

    @event_handler
    async def step(event: Step) -> None:
        ledger.enter(event.key, event.seq)
        await asyncio.sleep(0.0005)  # lets the other consumers of the loop run meanwhile
        ledger.leave(event.key)

    async def main() -> int:
        channel = AmqpChannel("steps", amqp_url, queue=queues(8), partitions=8, prefetch=20)
        messaging = Messaging(handlers=[step], channels=[channel])
        await messaging.asetup()
        try:
            steps = messaging.gateway(Steps)
            for seq in range(15):
                for number in range(30):
                    await steps.apublish(Step(f"key-{number}", seq))
            return (await messaging.arun("steps", concurrency=4)).handled
        finally:
            await messaging.aclose()

    assert asyncio.run(main()) == 450
    ledger.assert_in_order(keys=30, per_key=15)
    assert ledger.most_at_once > 1


def test_a_keyed_messages_delayed_retry_waits_in_the_worker_and_keeps_its_place(
    amqp_url: str, queues: Callable[..., str]
) -> None:
    """Sent back to its queue, the retry would come after the later messages of its key: it
    waits its delay in the worker instead, and the next message of the key waits for it."""
    handled: list[tuple[str, int]] = []
    failures = {("k", 0): 2}

    @event_handler
    def step(event: Step) -> None:
        left = failures.get((event.key, event.seq), 0)
        if left:
            failures[(event.key, event.seq)] = left - 1
            raise RuntimeError("not yet")
        handled.append((event.key, event.seq))

    channel = AmqpChannel("steps", amqp_url, queue=queues(2), partitions=2)
    retry = RetryPolicy(retries=3, initial_delay=0.05, jitter=0)
    messaging = Messaging(handlers=[step], channels=[channel], retry=retry)
    messaging.setup()
    try:
        steps = messaging.gateway(Steps)
        for seq in range(3):
            steps.publish(Step("k", seq))
        result = messaging.run("steps")
        depth = channel.depth()
    finally:
        messaging.close()

    assert handled == [("k", 0), ("k", 1), ("k", 2)]
    assert (result.handled, result.retried, result.dead_lettered) == (3, 2, 0)
    assert depth == 0  # nothing was sent back to a queue or a wait queue


@pytest.mark.parametrize("side", ["sync", "asyncio"])
def test_a_worker_told_to_stop_during_a_held_retry_gives_the_message_back_in_its_place(
    amqp_url: str, queues: Callable[..., str], side: str
) -> None:
    """A retry held for a minute does not hold the stop up: the worker gives the message
    back to its place, and the next worker tries it again, before the later ones of its key."""
    handled: list[tuple[str, int]] = []
    failed = threading.Event()
    failing = [True]

    @event_handler
    def step(event: Step) -> None:
        if event.seq == 0 and failing[0]:
            failed.set()
            raise RuntimeError("not yet")
        handled.append((event.key, event.seq))

    queue = queues(2)
    retry = RetryPolicy(retries=3, initial_delay=60, jitter=0)

    def messaging() -> Messaging:
        channel = AmqpChannel("steps", amqp_url, queue=queue, partitions=2)
        return Messaging(handlers=[step], channels=[channel], retry=retry)

    first = messaging()
    first.setup()
    steps = first.gateway(Steps)
    for seq in range(3):
        steps.publish(Step("k", seq))
    worker = first.worker("steps", until_empty=False, poll_interval=0.1)
    if side == "sync":
        running = threading.Thread(target=worker.run)
    else:
        running = threading.Thread(target=asyncio.run, args=(worker.arun(),))
    running.start()
    try:
        assert failed.wait(20), "the first try to fail"
        stopped_at = time.monotonic()
        worker.stop()
        running.join(30)
        took = time.monotonic() - stopped_at
    finally:
        first.close()
    assert not running.is_alive()
    assert took < 30, f"the stop waited {took:.1f}s for the held retry"
    assert handled == []

    failing[0] = False  # fixed: the next worker handles the three, in order
    second = messaging()
    try:
        result = second.run("steps")
    finally:
        second.close()
    assert handled == [("k", 0), ("k", 1), ("k", 2)]
    assert result.dead_lettered == 0


# -- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize("partitions", [0, -2, 2.5, True, "4"])
def test_partitions_must_be_a_positive_whole_number(amqp_url: str, partitions: Any) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Messaging(channels=[AmqpChannel("steps", amqp_url, partitions=partitions)])
    (problem,) = raised.value.problems
    assert problem == (
        f"AmqpChannel 'steps' has partitions={partitions!r}; it must be a whole number of "
        "queues, 1 or more (or None for one queue without ordering keys)"
    )


def test_partitions_and_priorities_are_refused_together(amqp_url: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Messaging(channels=[AmqpChannel("steps", amqp_url, partitions=4, priorities=True)])
    (problem,) = raised.value.problems
    assert "both partitions= and priorities=True" in problem
    assert "two channels" in problem


def test_queue_arguments_may_not_set_what_the_options_do(amqp_url: str) -> None:
    channel = AmqpChannel(
        "steps", amqp_url, queue_arguments={"x-single-active-consumer": True}, partitions=2
    )
    with pytest.raises(ConfigurationError) as raised:
        Messaging(channels=[channel])
    (problem,) = raised.value.problems
    assert "'x-single-active-consumer' in queue_arguments; use partitions=" in problem


def test_changing_the_partitions_of_a_queue_is_a_configuration_error(
    partitioned: Callable[..., AmqpChannel], amqp_url: str
) -> None:
    channel = partitioned(partitions=2)
    again = AmqpChannel(
        "steps", amqp_url, queue=channel.queue, partitions=2, queue_arguments={"x-max-length": 9}
    )
    with pytest.raises(ConfigurationError) as raised:
        again.setup()
    assert len(raised.value.problems) == 1
    assert f"a queue '{channel.queue}.0' declared with other arguments" in str(raised.value)
    assert "delete the queue (after draining it) or give the channel a new queue=" in str(
        raised.value
    )
    again.close()


# -- several processes share the partitions ------------------------------------------------


class Round:
    """Consumers in threads of their own, each consuming its channel until stopped; a round
    publishes one message to every partition and tells which consumer handled each."""

    def __init__(self, channels: dict[str, AmqpChannel]) -> None:
        self.channels = channels
        self.stopped: dict[str, threading.Event] = {}
        self.threads: dict[str, threading.Thread] = {}
        self.handled: dict[str, str] = {}  # key -> consumer
        self.seen: dict[str, list[int]] = {}
        self.lock = threading.Lock()
        self.rounds = 0
        any_channel = next(iter(channels.values()))
        partitions = any_channel.topology.queues
        # One key hashed to each partition.
        self.keys: dict[str, str] = {}
        number = 0
        while len(self.keys) < len(partitions):
            key = f"key-{number}"
            number += 1
            queue = any_channel.topology.queue_for({ORDERING_KEY: key, "busway.id": key})
            if queue not in self.keys.values():
                self.keys[key] = queue

    def start(self, name: str) -> None:
        stopped = self.stopped[name] = threading.Event()
        channel = self.channels[name]

        def handle(delivery: Delivery) -> None:
            key, seq = read(delivery)
            with self.lock:
                self.handled[key] = name
                self.seen.setdefault(key, []).append(seq)

        def consume() -> None:
            while not stopped.is_set():
                channel.consume(handle, 10, 0.1)

        thread = self.threads[name] = threading.Thread(target=consume, daemon=True)
        thread.start()

    def stop(self, name: str, close: bool = True) -> None:
        self.stopped[name].set()
        self.threads[name].join(30)
        if close:
            self.channels[name].close()

    def stop_all(self) -> None:
        for stopped in self.stopped.values():
            stopped.set()
        for thread in self.threads.values():
            thread.join(30)

    def partitions_per_consumer(self) -> dict[str, int]:
        """Publish one message to every partition, wait until all are handled, and count the
        partitions each consumer handled."""
        publisher = next(iter(self.channels.values()))
        with self.lock:
            self.handled.clear()
        for key in self.keys:
            publisher.send(keyed(key, self.rounds))
        self.rounds += 1
        wait_until(lambda: len(self.handled) == len(self.keys), "a round to be handled")
        with self.lock:
            counts: dict[str, int] = {}
            for name in self.handled.values():
                counts[name] = counts.get(name, 0) + 1
            return counts


def _balanced(round_: Round, expected: dict[str, int], timeout: float = 30) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    counts = round_.partitions_per_consumer()
    while counts != expected and time.monotonic() < deadline:
        counts = round_.partitions_per_consumer()
    return counts


def test_consumers_of_several_links_share_the_partitions(
    partitioned: Callable[..., AmqpChannel], amqp_url: str, broker: Broker
) -> None:
    first = partitioned(partitions=6)
    channels = {"first": first}
    for name in ("second", "third"):
        channels[name] = AmqpChannel("steps", amqp_url, queue=first.queue, partitions=6)
    round_ = Round(channels)
    try:
        round_.start("first")
        assert round_.partitions_per_consumer() == {"first": 6}

        round_.start("second")
        round_.start("third")
        wait_until(lambda: broker.members(first.queue) == 3, "three members")
        assert _balanced(round_, {"first": 2, "second": 2, "third": 2}) == {
            "first": 2,
            "second": 2,
            "third": 2,
        }

        # One that stops consuming, still open, gives its partitions up once idle.
        round_.stop("third", close=False)
        wait_until(lambda: broker.members(first.queue) == 2, "the third to leave")
        assert _balanced(round_, {"first": 3, "second": 3}) == {"first": 3, "second": 3}

        round_.stop("second")  # one closed gives them up at once
        wait_until(lambda: broker.members(first.queue) == 1, "the second to leave")
        assert _balanced(round_, {"first": 6}) == {"first": 6}
    finally:
        round_.stop_all()
        for name in ("second", "third"):
            channels[name].close()

    # Every key's messages were handled once each, in order, through every hand-over.
    assert round_.seen == {key: list(range(round_.rounds)) for key in round_.keys}
