"""The RabbitMQ channel: the shared conformance suite, its queue, its messages, its extra."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from amqp_support import Broker, Ping, Pings, wait_until
from amqp_support import broker as broker  # fixtures: pytest finds them by name
from amqp_support import queues as queues
from amqp_support import rabbitmq_in_use as rabbitmq_in_use

from busway import Messaging, event_handler
from busway.amqp import AmqpChannel
from busway.channels.base import Delivery, Envelope, MessageReturned
from busway.errors import BuswayError, ConversionError, MissingExtraError
from busway.message import DELIVER_AT
from busway.testing import ChannelContract
from busway.testing.conformance import ChannelFactory


@pytest.fixture
def channels(amqp_url: str, queues: Callable[[], str]) -> Iterator[Callable[..., AmqpChannel]]:
    """Make channels on a fresh queue (or ``queue=``), set up, and closed at the end."""
    made: list[AmqpChannel] = []

    def make(name: str = "rabbit", **options: Any) -> AmqpChannel:
        options.setdefault("queue", queues())
        channel = AmqpChannel(name, amqp_url, **options)
        channel.setup()
        made.append(channel)
        return channel

    yield make
    for channel in made:
        channel.close()


class TestAmqpChannel(ChannelContract):
    @pytest.fixture
    def channel_factory(self, amqp_url: str, queues: Callable[[], str]) -> ChannelFactory:
        return lambda name: AmqpChannel(name, amqp_url, queue=queues())


def consume_all(channel: AmqpChannel, wait: float = 0.0) -> list[Delivery]:
    got: list[Delivery] = []
    while channel.consume(got.append, 100, wait):
        pass
    return got


def numbers(deliveries: list[Delivery]) -> list[int]:
    return [int(delivery.envelope.body) for delivery in deliveries]


def envelope(number: int, **headers: Any) -> Envelope:
    return Envelope(str(number).encode(), {"id": str(uuid.uuid4()), **headers})


# -- the queue -----------------------------------------------------------------------------


def test_setup_is_idempotent_and_keeps_messages(
    channels: Callable[..., AmqpChannel], broker: Broker
) -> None:
    channel = channels()
    channel.send(envelope(1))
    channel.setup()
    AmqpChannel("again", broker.url, queue=channel.queue).setup()

    assert broker.count(channel.queue) == 1
    assert numbers(consume_all(channel)) == [1]


def test_the_queue_is_durable_and_messages_persistent(
    channels: Callable[..., AmqpChannel], broker: Broker
) -> None:
    channel = channels()
    channel.send(envelope(1, tenant="t"))

    assert broker.is_durable(channel.queue)
    message = broker.get(channel.queue)
    assert message is not None
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.headers["tenant"] == "t"
    assert message.message_id == message.headers["id"]


def test_depth_counts_the_waiting_messages(
    channels: Callable[..., AmqpChannel], amqp_url: str, queues: Callable[[], str]
) -> None:
    channel = channels()
    assert channel.depth() == 0
    for number in range(3):
        channel.send(envelope(number))
    assert channel.depth() == 3

    assert AmqpChannel("missing", amqp_url, queue=queues()).depth() is None


def test_sending_to_a_queue_never_set_up_says_how_to_fix_it(
    amqp_url: str, queues: Callable[[], str]
) -> None:
    channel = AmqpChannel("rabbit", amqp_url, queue=queues())
    try:
        with pytest.raises(BuswayError, match="busway setup"):
            channel.send(envelope(1))
        with pytest.raises(BuswayError, match="busway setup"):
            channel.consume(lambda _delivery: None, 1, 0.0)
    finally:
        channel.close()


def test_an_unreachable_broker_is_reported_with_its_address() -> None:
    channel = AmqpChannel("rabbit", "amqp://guest:secret@127.0.0.1:1/")
    with pytest.raises(BuswayError, match=r"127\.0\.0\.1:1") as raised:
        channel.send(envelope(1))
    assert "secret" not in str(raised.value)


def test_the_configuration_is_checked_at_start_up() -> None:
    assert AmqpChannel("rabbit", "http://127.0.0.1/", prefetch=0).validate() == [
        "AmqpChannel 'rabbit' has URL 'http://127.0.0.1/'; it must start with amqp:// or amqps://",
        "AmqpChannel 'rabbit' needs a prefetch of 1 or more",
    ]


# -- messages ------------------------------------------------------------------------------


def test_headers_come_back_typed(channels: Callable[..., AmqpChannel]) -> None:
    channel = channels()
    headers = {
        "id": "m-1",
        "text": "Zürich ☃ 東京 — ø",
        "small": 3,
        "negative": -70000,
        "large": 2**40,
        "timestamp": 1_720_000_000.123456,
        "flag": True,
        "off": False,
        "nothing": None,
        "x-request-id": "kept",
    }
    channel.send(Envelope("é".encode(), headers))

    (delivery,) = consume_all(channel)

    assert delivery.envelope.body == "é".encode()
    assert dict(delivery.envelope.headers) == headers
    for name, value in headers.items():
        assert type(delivery.envelope.headers[name]) is type(value), name


def test_a_header_that_cannot_travel_is_refused(channels: Callable[..., AmqpChannel]) -> None:
    channel = channels()
    with pytest.raises(ConversionError, match="header values must be"):
        channel.send(Envelope(b"1", {"huge": 2**70}))
    with pytest.raises(ConversionError, match="'tags' is a list"):
        channel.send(Envelope(b"1", {"tags": ["a"]}))  # type: ignore[dict-item]


def test_a_returned_message_keeps_its_place(channels: Callable[..., AmqpChannel]) -> None:
    channel = channels()
    for number in range(5):
        channel.send(envelope(number))
    got: list[int] = []

    def two_then_stop(delivery: Delivery) -> None:
        if len(got) == 2:
            raise MessageReturned
        got.append(int(delivery.envelope.body))

    assert channel.consume(two_then_stop, 100, 1.0) == 2
    assert got + numbers(consume_all(channel)) == [0, 1, 2, 3, 4]


def test_a_failed_handling_gives_the_messages_back_in_order(
    channels: Callable[..., AmqpChannel],
) -> None:
    channel = channels()
    for number in range(5):
        channel.send(envelope(number))
    got: list[Delivery] = []

    def fail_on_the_third(delivery: Delivery) -> None:
        if len(got) == 2:
            raise ConnectionAbortedError("the worker died")
        got.append(delivery)

    with pytest.raises(ConnectionAbortedError):
        channel.consume(fail_on_the_third, 100, 1.0)

    again = consume_all(channel, wait=0.0)
    assert numbers(got) + numbers(again) == [0, 1, 2, 3, 4]
    assert again[0].redelivered
    assert not got[0].redelivered


def test_a_waiting_consumer_gets_a_message_as_it_arrives(
    channels: Callable[..., AmqpChannel],
) -> None:
    channel = channels()
    sender = channels(queue=channel.queue)
    timer = threading.Timer(0.3, lambda: sender.send(envelope(7)))
    got: list[Delivery] = []
    timer.start()
    started = time.monotonic()

    assert channel.consume(got.append, 10, 5.0) == 1

    assert numbers(got) == [7]
    assert time.monotonic() - started < 2


def test_a_consumer_holds_no_more_than_the_prefetch(
    channels: Callable[..., AmqpChannel], broker: Broker
) -> None:
    channel = channels(prefetch=3)
    for number in range(10):
        channel.send(envelope(number))

    assert channel.consume(lambda _delivery: None, 1, 1.0) == 1

    # One handled and acknowledged; three fetched by the consumer, the rest still queued.
    wait_until(lambda: broker.count(channel.queue) == 6, "the prefetch to fill")
    # Fetched messages nobody takes go back to the queue after a while.
    wait_until(lambda: broker.count(channel.queue) == 9, "the fetched messages to go back")
    assert numbers(consume_all(channel)) == list(range(1, 10))


def test_concurrent_consumers_share_the_channel(
    amqp_url: str, queues: Callable[[], str], tmp_path: Path
) -> None:
    seen: list[int] = []
    lock = threading.Lock()

    @event_handler
    def note(event: Ping) -> None:
        with lock:
            seen.append(event.number)
        time.sleep(0.001)

    messaging = Messaging(
        handlers=[note], channels=[AmqpChannel("pings", amqp_url, queue=queues(), prefetch=10)]
    )
    messaging.setup()
    try:
        for number in range(200):
            messaging.gateway(Pings).publish(Ping(number))

        result = messaging.run("pings", concurrency=3)

        assert result.handled == 200
        assert sorted(seen) == list(range(200))
    finally:
        messaging.close()


def test_a_consumer_that_found_the_queue_empty_fetches_nothing_more(
    channels: Callable[..., AmqpChannel], broker: Broker
) -> None:
    channel = channels()
    channel.send(envelope(1))
    assert numbers(consume_all(channel)) == [1]

    sender = channels(queue=channel.queue)
    for number in range(3):
        sender.send(envelope(number))

    assert broker.count(channel.queue) == 3  # all there for any worker, none held by this one


def test_delays_do_not_wait_behind_longer_ones(
    channels: Callable[..., AmqpChannel], broker: Broker
) -> None:
    channel = channels()
    sent = time.time()
    channel.send(envelope(1, **{DELIVER_AT: sent + 30}))
    channel.send(envelope(2, **{DELIVER_AT: sent + 0.3}))
    channel.send(envelope(3))
    arrivals: dict[int, float] = {}

    def note(delivery: Delivery) -> None:
        arrivals[int(delivery.envelope.body)] = time.time() - sent

    while 2 not in arrivals and time.time() - sent < 5:
        channel.consume(note, 10, 0.5)

    assert list(arrivals) == [3, 2]
    assert 0.3 <= arrivals[2] < 1.0  # not held up behind the 30 s one
    assert broker.count(channel.queue) == 0
    assert broker.count(f"{channel.queue}.wait.16384") == 1  # the 30 s one, on its way


async def test_the_asyncio_edge(channels: Callable[..., AmqpChannel]) -> None:
    channel = channels()
    try:
        await channel.asetup()
        for number in range(3):
            await channel.asend(envelope(number, tenant="ø"))
        await channel.asend(envelope(3, **{DELIVER_AT: time.time() + 0.2}))
        got: list[Delivery] = []

        async def handle(delivery: Delivery) -> None:
            got.append(delivery)

        assert await channel.aconsume(handle, 100, 0.0) == 3
        assert await channel.aconsume(handle, 100, 2.0) == 1
        assert numbers(got) == [0, 1, 2, 3]
        assert got[0].envelope.headers["tenant"] == "ø"
    finally:
        await channel.aclose()


# -- the extra -----------------------------------------------------------------------------


def test_without_aio_pika_the_error_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "aio_pika", None)
    monkeypatch.delitem(sys.modules, "busway.amqp")
    monkeypatch.delitem(sys.modules, "busway.channels.amqp")

    with pytest.raises(MissingExtraError) as raised:
        import busway.amqp  # noqa: F401

    assert str(raised.value) == (
        "the RabbitMQ channel (busway.amqp) needs an optional dependency that is not "
        "installed; install it with: pip install 'busway[rabbitmq]'"
    )


def test_importing_busway_does_not_import_aio_pika() -> None:
    code = "import sys, busway; assert 'aio_pika' not in sys.modules, 'aio_pika was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
