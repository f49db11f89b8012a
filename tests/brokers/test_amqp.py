"""The RabbitMQ channel against the RabbitMQ server on loopback.

Override its URL with ``BUSWAY_TEST_AMQP_URL``. An unreachable server skips these tests,
except on CI (``CI=true``), where it fails them. Each test works on queues of its own, deleted
at its end.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aio_pika
import aiormq
import amqp_worker
import msgspec
import pytest
from sqlalchemy import create_engine, insert, select
from sqlalchemy.orm import Session

from busway import EventBus, Messaging, RetryPolicy, SqlChannel, asynchronous, event_handler
from busway.amqp import AmqpChannel
from busway.channels.base import Delivery, Envelope, MessageReturned
from busway.errors import BuswayError, ConversionError, MissingExtraError
from busway.message import DELIVER_AT
from busway.testing import ChannelContract, FakeClock
from busway.testing.conformance import ChannelFactory

HERE = Path(__file__).parent


@pytest.fixture(autouse=True)
def rabbitmq_in_use() -> Iterator[IO[str]]:
    """A lock held shared while a test uses RabbitMQ, exclusively while one restarts it: test
    runs side by side on this machine never restart RabbitMQ under each other's feet."""
    with open(Path(tempfile.gettempdir()) / "busway-rabbitmq-restart.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        yield lock  # closing the file releases the lock


class Broker:
    """RabbitMQ seen from outside the channel under test, through a connection of its own."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _run(self, work: Callable[[aio_pika.abc.AbstractChannel], Awaitable[Any]]) -> Any:
        async def main() -> Any:
            connection = await aio_pika.connect(self.url)
            try:
                return await work(await connection.channel())
            finally:
                await connection.close()

        # In a thread of its own: the calling thread may be running an event loop already.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, main()).result()

    def count(self, queue: str) -> int | None:
        """Messages ready in ``queue``; None if it does not exist."""

        async def count(channel: aio_pika.abc.AbstractChannel) -> int | None:
            try:
                declared = await channel.declare_queue(queue, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return None
            return declared.declaration_result.message_count

        return self._run(count)  # type: ignore[no-any-return]

    def get(self, queue: str) -> aio_pika.abc.AbstractIncomingMessage | None:
        async def get(channel: aio_pika.abc.AbstractChannel) -> Any:
            declared = await channel.declare_queue(queue, passive=True)
            return await declared.get(no_ack=True, fail=False)

        return self._run(get)  # type: ignore[no-any-return]

    def is_durable(self, queue: str) -> bool:
        """Declaring it again as not durable fails if, and only if, it is durable."""

        async def redeclare(channel: aio_pika.abc.AbstractChannel) -> bool:
            try:
                await channel.declare_queue(queue, durable=False)
            except aiormq.exceptions.ChannelPreconditionFailed:
                return True
            return False

        return self._run(redeclare)  # type: ignore[no-any-return]

    def delete(self, queue: str) -> None:
        """Delete ``queue`` and every wait queue it may have."""

        async def delete(channel: aio_pika.abc.AbstractChannel) -> None:
            await channel.queue_delete(queue)
            for power in range(32):
                await channel.queue_delete(f"{queue}.wait.{1 << power}")

        self._run(delete)


@pytest.fixture
def broker(amqp_url: str) -> Broker:
    return Broker(amqp_url)


@pytest.fixture
def queues(broker: Broker) -> Iterator[Callable[[], str]]:
    """Make queue names of this test's own; the queues are deleted when it ends."""
    made: list[str] = []

    def make() -> str:
        made.append(f"busway-test-{uuid.uuid4().hex[:12]}")
        return made[-1]

    yield make
    for queue in made:
        broker.delete(queue)


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


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def consume_all(channel: AmqpChannel, wait: float = 0.0) -> list[Delivery]:
    got: list[Delivery] = []
    while channel.consume(got.append, 100, wait):
        pass
    return got


def numbers(deliveries: list[Delivery]) -> list[int]:
    return [int(delivery.envelope.body) for delivery in deliveries]


def envelope(number: int, **headers: Any) -> Envelope:
    return Envelope(str(number).encode(), {"id": str(uuid.uuid4()), **headers})


@dataclass
class Ping:
    number: int


@asynchronous("pings")
class Pings(EventBus):
    pass


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


# -- pipelines -----------------------------------------------------------------------------


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


# -- worker processes killed ---------------------------------------------------------------


def start(role: str, database: str, amqp_url: str, queue: str, *options: str) -> Any:
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), *sys.path]))
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import amqp_worker; amqp_worker.main()",
            role,
            database,
            amqp_url,
            queue,
            *options,
        ],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: Any, timeout: float = 60) -> None:
    _, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err


def kill_when(marker: Path, process: Any, timeout: float = 30) -> str:
    """Wait for the process to write ``marker``, then kill it with SIGKILL."""
    deadline = time.monotonic() + timeout
    try:
        while not marker.exists():
            if process.poll() is not None:
                _, err = process.communicate()
                pytest.fail(f"the worker exited ({process.returncode}) too early:\n{err}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {marker.name}")
            time.sleep(0.01)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL
    return marker.read_text()


@pytest.fixture
def processes(
    tmp_path: Path, amqp_url: str, queues: Callable[[], str]
) -> Iterator[tuple[str, str, Messaging]]:
    """A SQLite database and a queue shared with worker processes, and their application."""
    database = f"sqlite:///{tmp_path / 'effects.db'}"
    queue = queues()
    messaging = amqp_worker.build(database, amqp_url, queue)
    messaging.setup()
    with messaging.database_engine.begin() as connection:
        amqp_worker.metadata.create_all(connection)
    yield database, queue, messaging
    messaging.close()


def effects(database: Any) -> dict[int, str]:
    engine = create_engine(database)
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(amqp_worker.effects)).all()
    finally:
        engine.dispose()
    return {number: worker for number, worker in rows}


def _record(messaging: Messaging, count: int) -> None:
    events = messaging.gateway(amqp_worker.OutboxEvents)
    with messaging.transaction():
        for number in range(count):
            events.publish(amqp_worker.Recorded(number))


def test_a_relay_killed_between_publish_and_delete_loses_nothing(
    processes: tuple[str, str, Messaging], broker: Broker, amqp_url: str, tmp_path: Path
) -> None:
    database, queue, messaging = processes
    total = 40
    _record(messaging, total)
    marker = tmp_path / "confirmed"

    relay = start("relay", database, amqp_url, queue, "--hang-at", "1", "--marker", str(marker))
    kill_when(marker, relay)

    # RabbitMQ confirmed the whole batch; the outbox never deleted it.
    assert broker.count(queue) == total
    assert messaging.channel("outbox").depth() == total

    finish(start("relay", database, amqp_url, queue))
    assert messaging.channel("outbox").depth() == 0
    assert broker.count(queue) == 2 * total  # each message twice: the inbox absorbs it

    finish(start("consume", database, amqp_url, queue, "--worker", "final"))

    assert effects(database) == {number: "final" for number in range(total)}
    assert broker.count(queue) == 0
    assert messaging.dead_letters.list() == []


def test_consumers_killed_mid_handler_lose_nothing_and_repeat_nothing(
    processes: tuple[str, str, Messaging], broker: Broker, amqp_url: str, tmp_path: Path
) -> None:
    database, queue, messaging = processes
    total = 30
    _record(messaging, total)
    messaging.run("outbox")
    assert broker.count(queue) == total

    # Killed inside its 7th handler: that row was written, never committed.
    inside = tmp_path / "inside"
    consumer = start(
        "consume", database, amqp_url, queue, "--worker", "inside", "--hang-at", "7",
        "--marker", str(inside),
    )  # fmt: skip
    in_hand = int(kill_when(inside, consumer))
    done = effects(database)
    assert len(done) == 6 and in_hand not in done

    # Killed after its 5th handler committed, before RabbitMQ heard of it.
    after = tmp_path / "after"
    consumer = start(
        "consume", database, amqp_url, queue, "--worker", "after", "--hang-at", "5",
        "--after-commit", "--marker", str(after),
    )  # fmt: skip
    committed = int(kill_when(after, consumer))
    done = effects(database)
    assert len(done) == 11 and done[committed] == "after"

    finish(start("consume", database, amqp_url, queue, "--worker", "final"))

    done = effects(database)
    assert sorted(done) == list(range(total))  # each number once: the key allows no more
    assert list(done.values()).count("inside") == 6
    assert list(done.values()).count("after") == 5
    assert broker.count(queue) == 0
    assert messaging.dead_letters.list() == []


# -- RabbitMQ restarted in the middle of a run ---------------------------------------------


class RabbitServer:
    """The RabbitMQ node on loopback; its application stopped and started with rabbitmqctl."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def up(self) -> bool:
        try:
            self.broker.count("busway-test-probe")
        except (OSError, aiormq.exceptions.AMQPError):
            return False
        return True

    def _wait(self, up: bool, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.up() != up:
            if time.monotonic() > deadline:
                raise TimeoutError(f"RabbitMQ did not {'start' if up else 'stop'} in {timeout}s")
            time.sleep(0.1)

    def stop(self) -> None:
        subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True)
        self._wait(up=False)

    def start(self) -> None:
        subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True)
        self._wait(up=True)


@pytest.fixture
def rabbit_server(
    broker: Broker, amqp_url: str, rabbitmq_in_use: IO[str]
) -> Iterator[RabbitServer]:
    """RabbitMQ to restart; it is running when the test ends, whatever happens."""
    if not shutil.which("rabbitmqctl") or "@127.0.0.1" not in amqp_url:
        message = "restarting RabbitMQ needs rabbitmqctl and the broker on this machine"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI: {message}", pytrace=False)
        pytest.skip(message)
    server = RabbitServer(broker)
    fcntl.flock(rabbitmq_in_use, fcntl.LOCK_EX)  # once no other test run is using RabbitMQ
    try:
        yield server
    finally:
        if not server.up():
            server.start()


def test_publishers_and_workers_carry_on_when_rabbitmq_restarts(
    rabbit_server: RabbitServer, amqp_url: str, queues: Callable[[], str], tmp_path: Path
) -> None:
    """Persistent messages on durable queues survive; what went unconfirmed is published
    again (by a send, or by a relay's batch), what went unacknowledged is delivered again,
    and the inbox absorbs the repeats."""
    seen: dict[str, list[int]] = {"sync": [], "asyncio": []}
    total = 150

    def make(side: str) -> tuple[Messaging, Messaging]:
        queue = queues()

        @event_handler
        def ping(event: Ping, session: Session) -> None:
            session.execute(insert(amqp_worker.effects).values(number=event.number, worker=side))
            seen[side].append(event.number)

        worker_side = Messaging(
            handlers=[ping],
            channels=[AmqpChannel("pings", amqp_url, queue=queue, reconnect_interval=0.2)],
            database=f"sqlite:///{tmp_path / (side + '.db')}",
            retry=RetryPolicy(retries=0),  # a repeated effect would fail on its number
        )
        worker_side.setup()
        with worker_side.database_engine.begin() as connection:
            amqp_worker.metadata.create_all(connection)
        publisher_side = Messaging(
            channels=[AmqpChannel("pings", amqp_url, queue=queue, reconnect_interval=0.2)]
        )
        return worker_side, publisher_side

    (sync_worker, sync_publisher), (async_worker, async_publisher) = make("sync"), make("asyncio")
    # And an outbox relayed to RabbitMQ, consumed by another worker.
    relay_database, relay_queue = f"sqlite:///{tmp_path / 'relay.db'}", queues()
    relay, consumer = (
        amqp_worker.build(relay_database, amqp_url, relay_queue, worker="relay") for _ in "ab"
    )
    relay.setup()
    with relay.database_engine.begin() as connection:
        amqp_worker.metadata.create_all(connection)
    workers = [
        sync_worker.worker("pings", until_empty=False, poll_interval=0.2),
        async_worker.worker("pings", until_empty=False, poll_interval=0.2),
        relay.worker("outbox", until_empty=False, poll_interval=0.2),
        consumer.worker("rabbit", until_empty=False, poll_interval=0.2),
    ]

    def publish_sync() -> None:
        for number in range(total):
            sync_publisher.gateway(Pings).publish(Ping(number))
            time.sleep(0.01)

    async def publish_async() -> None:
        try:
            for number in range(total):
                await async_publisher.gateway(Pings).apublish(Ping(number))
                await asyncio.sleep(0.01)
        finally:
            await async_publisher.aclose()

    def publish_to_the_outbox() -> None:
        for number in range(total):
            with relay.transaction():
                relay.gateway(amqp_worker.OutboxEvents).publish(amqp_worker.Recorded(number))
            time.sleep(0.01)

    async def run_async_worker() -> None:
        try:
            await workers[1].arun()
        finally:
            await async_worker.aclose()

    def progress() -> int:
        return min(len(seen["sync"]), len(seen["asyncio"]), len(effects(relay_database)))

    threads = [
        threading.Thread(target=workers[0].run),
        threading.Thread(target=asyncio.run, args=(run_async_worker(),)),
        threading.Thread(target=workers[2].run),
        threading.Thread(target=workers[3].run),
        threading.Thread(target=publish_sync),
        threading.Thread(target=asyncio.run, args=(publish_async(),)),
        threading.Thread(target=publish_to_the_outbox),
    ]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: progress() >= 30, "the first messages")
        rabbit_server.stop()
        time.sleep(0.5)
        rabbit_server.start()
        for thread in threads[4:]:
            thread.join(timeout=60)
        wait_until(lambda: progress() >= total, "every message", timeout=60)
    finally:
        for worker in workers:
            worker.stop()
        for thread in threads:
            thread.join(timeout=30)
        for messaging in (sync_worker, sync_publisher, relay, consumer):
            messaging.close()

    assert all(not thread.is_alive() for thread in threads)
    for side, messaging in (("sync", sync_worker), ("asyncio", async_worker)):
        assert effects(messaging.database_engine.url) == dict.fromkeys(range(total), side)
        assert sorted(seen[side]) == list(range(total))  # each once
        assert messaging.dead_letters.list() == []
    assert effects(relay_database) == dict.fromkeys(range(total), "relay")
    assert relay.channel("outbox").depth() == 0
    assert relay.dead_letters.list() == []
