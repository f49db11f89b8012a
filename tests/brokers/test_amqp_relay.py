"""Outboxes relayed to RabbitMQ, and what a relay keeps back when RabbitMQ refuses messages."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
from amqp_support import Broker
from amqp_support import broker as broker  # fixtures: pytest finds them by name
from amqp_support import queues as queues
from amqp_support import rabbitmq_in_use as rabbitmq_in_use

from busway import EventBus, Messaging, SqlChannel, asynchronous, event_handler
from busway.amqp import AmqpChannel
from busway.errors import BuswayError
from busway.testing import FakeClock


@dataclass
class OrderWasPlaced:
    order_id: str


@asynchronous("outbox", "rabbit")
class OutboxEvents(EventBus):
    """Committed with the business transaction, then relayed to RabbitMQ."""


@pytest.fixture
def pipeline(
    tmp_path: Path, amqp_url: str, queues: Callable[[], str]
) -> Iterator[tuple[Messaging, list[str]]]:
    seen: list[str] = []

    @event_handler
    def note(event: OrderWasPlaced) -> None:
        seen.append(event.order_id)

    messaging = Messaging(
        handlers=[note],
        channels=[SqlChannel("outbox"), AmqpChannel("rabbit", amqp_url, queue=queues())],
        database=f"sqlite:///{tmp_path / 'outbox.db'}",
    )
    messaging.setup()
    yield messaging, seen
    messaging.close()


def _publish_orders(messaging: Messaging, count: int) -> list[str]:
    events = messaging.gateway(OutboxEvents)
    with messaging.transaction():
        for number in range(count):
            events.publish(OrderWasPlaced(f"o-{number}"))
    return [f"o-{number}" for number in range(count)]


def test_an_outbox_relays_to_rabbitmq(
    pipeline: tuple[Messaging, list[str]], broker: Broker
) -> None:
    messaging, seen = pipeline
    rabbit = messaging.channel("rabbit")
    assert isinstance(rabbit, AmqpChannel)
    orders = _publish_orders(messaging, 250)

    assert messaging.run("outbox").handled == 250

    assert messaging.channel("outbox").depth() == 0
    assert broker.count(rabbit.queue) == 250
    assert seen == []

    messaging.run("rabbit")

    assert seen == orders  # each once, in order


async def test_an_outbox_relays_to_rabbitmq_from_asyncio(
    pipeline: tuple[Messaging, list[str]], broker: Broker
) -> None:
    messaging, seen = pipeline
    orders = _publish_orders(messaging, 120)
    try:
        assert (await messaging.arun("outbox")).handled == 120
        assert messaging.channel("outbox").depth() == 0
        await messaging.arun("rabbit")
    finally:
        await messaging.aclose()

    assert seen == orders


@asynchronous("outbox", "rabbit-b")
class OtherOutboxEvents(EventBus):
    """Relayed to a second RabbitMQ queue."""


@pytest.fixture
def two_queue_relay(
    tmp_path: Path, amqp_url: str, queues: Callable[[], str]
) -> Iterator[tuple[Messaging, FakeClock]]:
    """An outbox relayed to two RabbitMQ queues, on a clock the test moves."""
    clock = FakeClock(time.time())
    messaging = Messaging(
        channels=[
            SqlChannel("outbox"),
            AmqpChannel("rabbit", amqp_url, queue=queues()),
            AmqpChannel("rabbit-b", amqp_url, queue=queues(), publish_timeout=5),
        ],
        database=f"sqlite:///{tmp_path / 'outbox.db'}",
        clock=clock,
    )
    messaging.setup()
    yield messaging, clock
    messaging.close()


def _publish_to_both(messaging: Messaging, count: int) -> tuple[list[str], list[str]]:
    """``count`` events, every other one to each queue."""
    first, second = messaging.gateway(OutboxEvents), messaging.gateway(OtherOutboxEvents)
    with messaging.transaction():
        for number in range(count):
            (first if number % 2 == 0 else second).publish(OrderWasPlaced(f"o-{number}"))
    return [f"o-{n}" for n in range(0, count, 2)], [f"o-{n}" for n in range(1, count, 2)]


def _queued(broker: Broker, queue: str) -> list[str]:
    """Take every message off ``queue``: their order ids, in order."""
    orders: list[str] = []
    while (message := broker.get(queue)) is not None:
        orders.append(msgspec.json.decode(message.body)["order_id"])
    return orders


def _queue_of(messaging: Messaging, name: str) -> str:
    channel = messaging.channel(name)
    assert isinstance(channel, AmqpChannel)
    return channel.queue


def test_a_relay_keeps_back_only_the_messages_rabbitmq_refused(
    two_queue_relay: tuple[Messaging, FakeClock], broker: Broker
) -> None:
    messaging, clock = two_queue_relay
    to_first, to_second = _publish_to_both(messaging, 20)
    broker.delete(_queue_of(messaging, "rabbit-b"))  # RabbitMQ returns what goes there

    with pytest.raises(BuswayError, match="busway setup"):
        messaging.run("outbox")

    assert messaging.channel("outbox").depth() == 10  # only the refused ones stay
    assert _queued(broker, _queue_of(messaging, "rabbit")) == to_first
    assert messaging.run("outbox").handled == 0  # kept back for a while, not retried at once

    messaging.channel("rabbit-b").setup()
    clock.advance(1)
    assert messaging.run("outbox").handled == 10

    assert messaging.channel("outbox").depth() == 0
    assert _queued(broker, _queue_of(messaging, "rabbit-b")) == to_second
    assert broker.count(_queue_of(messaging, "rabbit")) == 0  # nothing sent twice


def test_a_message_that_cannot_be_an_amqp_message_goes_to_the_dead_letters(
    two_queue_relay: tuple[Messaging, FakeClock], broker: Broker
) -> None:
    """The outbox takes any JSON header; AMQP has no integer wider than 64 bits. That message
    can never be relayed: it is dead-lettered with the reason, its neighbours go out once."""
    messaging, _ = two_queue_relay
    events = messaging.gateway(OutboxEvents)
    with messaging.transaction():
        events.publish(OrderWasPlaced("o-0"))
        events.publish(OrderWasPlaced("o-1"), headers={"too-big": 2**70})
        events.publish(OrderWasPlaced("o-2"))

    result = messaging.run("outbox")

    assert (result.handled, result.failed) == (3, 1)
    assert messaging.channel("outbox").depth() == 0
    assert _queued(broker, _queue_of(messaging, "rabbit")) == ["o-0", "o-2"]
    (letter,) = messaging.dead_letters.list()
    assert letter.error_type == "busway.errors.ConversionError"
    assert "cannot be an AMQP header" in letter.error_message


async def test_an_asyncio_relay_keeps_back_only_the_messages_rabbitmq_refused(
    two_queue_relay: tuple[Messaging, FakeClock], broker: Broker
) -> None:
    messaging, clock = two_queue_relay
    to_first, to_second = _publish_to_both(messaging, 20)
    broker.delete(_queue_of(messaging, "rabbit-b"))
    try:
        with pytest.raises(BuswayError, match="busway setup"):
            await messaging.arun("outbox")
        assert messaging.channel("outbox").depth() == 10
        assert _queued(broker, _queue_of(messaging, "rabbit")) == to_first

        await messaging.channel("rabbit-b").asetup()
        clock.advance(1)
        assert (await messaging.arun("outbox")).handled == 10
    finally:
        await messaging.aclose()

    assert _queued(broker, _queue_of(messaging, "rabbit-b")) == to_second
    assert broker.count(_queue_of(messaging, "rabbit")) == 0


@pytest.fixture
def full_queues() -> Iterator[str]:
    """A RabbitMQ policy: queues named ``busway-test-full-*`` hold 5 messages at most, and
    refuse (nack) any more published to them."""
    if not shutil.which("rabbitmqctl"):
        message = "a RabbitMQ policy needs rabbitmqctl on this machine"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI: {message}", pytrace=False)
        pytest.skip(message)
    name = f"busway-test-full-{uuid.uuid4().hex[:8]}"
    definition = '{"max-length": 5, "overflow": "reject-publish"}'
    policy = ["set_policy", "--apply-to", "queues", name, f"^{name}$", definition]
    subprocess.run(["rabbitmqctl", *policy], check=True, capture_output=True)
    yield name
    subprocess.run(["rabbitmqctl", "clear_policy", name], check=True, capture_output=True)


def test_a_relay_to_a_full_queue_sends_the_rest_when_there_is_room(
    tmp_path: Path, amqp_url: str, broker: Broker, full_queues: str
) -> None:
    clock = FakeClock(time.time())
    messaging = Messaging(
        channels=[SqlChannel("outbox"), AmqpChannel("rabbit", amqp_url, queue=full_queues)],
        database=f"sqlite:///{tmp_path / 'outbox.db'}",
        clock=clock,
    )
    messaging.setup()
    try:
        orders = _publish_orders(messaging, 8)

        with pytest.raises(BuswayError, match="refused"):
            messaging.run("outbox")

        assert messaging.channel("outbox").depth() == 3  # RabbitMQ confirmed 5, refused 3
        taken = _queued(broker, full_queues)
        assert taken == orders[:5]
        clock.advance(1)
        assert messaging.run("outbox").handled == 3
        assert _queued(broker, full_queues) == orders[5:]
    finally:
        messaging.close()
        broker.delete(full_queues)
