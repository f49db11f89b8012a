"""The Redis Streams channel against the Redis server on loopback.

Override its URL with ``BUSWAY_TEST_REDIS_URL``. An unreachable server skips these tests,
except on CI (``CI=true``), where it fails them. Each test works on a stream of its own.
Every test holds a lock on Redis, shared; the test that restarts Redis holds it exclusively,
so that test runs side by side never restart Redis under each other's feet.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import msgspec
import pytest
import redis
import redis_worker
from sqlalchemy import create_engine, select

from busway import EventBus, Messaging, SqlChannel, asynchronous, event_handler
from busway.channels.base import Channel, Delivery, Envelope, MessageReturned
from busway.errors import ConversionError, MissingExtraError
from busway.message import DELIVER_AT
from busway.redis import RedisChannel
from busway.testing import ChannelContract, FakeClock
from busway.testing.conformance import ChannelFactory
from workers import deaths_until_drained, kill_when, start_worker

REDIS_URL = os.environ.get("BUSWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
HERE = Path(__file__).parent


def _problem(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI: {message}", pytrace=False)
    pytest.skip(message)


def _ping(url: str = REDIS_URL) -> Exception | None:
    client = redis.Redis.from_url(url, socket_connect_timeout=2, retry=None)
    try:
        client.ping()
    except redis.ConnectionError as error:
        return error
    finally:
        client.close()
    return None


@pytest.fixture(autouse=True)
def redis_in_use() -> Iterator[IO[str]]:
    """A lock held shared while a test uses Redis, exclusively while one restarts it: test
    runs side by side on this machine never restart Redis under each other's feet."""
    with open(Path(tempfile.gettempdir()) / "busway-redis-restart.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        yield lock  # closing the file releases the lock


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    error = _ping()
    if error is not None:
        _problem(
            f"Redis is not running at {REDIS_URL} ({error}). The Redis tests need it; start "
            "it or set BUSWAY_TEST_REDIS_URL."
        )
    connection = redis.Redis.from_url(REDIS_URL)
    yield connection
    connection.close()


@pytest.fixture
def stream(client: redis.Redis) -> Iterator[str]:
    """A stream key of this test's own, with nothing left behind."""
    key = f"busway-test:{{{uuid.uuid4().hex}}}"
    yield key
    client.delete(key, f"{key}:delayed")


@pytest.fixture
def channels(stream: str) -> Iterator[Callable[..., RedisChannel]]:
    """Make channels on ``stream``, attached to the real clock and closed at the end."""
    made: list[RedisChannel] = []

    def make(**options: Any) -> RedisChannel:
        channel = RedisChannel("jobs", REDIS_URL, stream=stream, **options)
        Messaging(channels=[channel])  # attaches it
        channel.setup()
        made.append(channel)
        return channel

    yield make
    for channel in made:
        channel.close()


def envelope(number: int, deliver_at: float | None = None) -> Envelope:
    headers: dict[str, Any] = {"id": f"m-{number}"}
    if deliver_at is not None:
        headers[DELIVER_AT] = deliver_at
    return Envelope(str(number).encode(), headers)


def consume_all(channel: RedisChannel, wait: float = 0.0) -> list[Delivery]:
    seen: list[Delivery] = []
    while channel.consume(seen.append, 100, wait):
        pass
    return seen


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


class TestRedisChannel(ChannelContract):
    @pytest.fixture
    def channel_factory(self, stream: str) -> ChannelFactory:
        return lambda name: RedisChannel(name, REDIS_URL, stream=stream)


# -- the channel on its own ----------------------------------------------------------------


def test_setup_is_idempotent(channels: Callable[..., RedisChannel], client: redis.Redis) -> None:
    channel = channels()
    channel.setup()
    channel.setup()

    groups = client.xinfo_groups(channel.stream)
    assert [group["name"] for group in groups] == [b"busway"]


def test_messages_sent_before_setup_are_delivered(stream: str) -> None:
    channel = RedisChannel("jobs", REDIS_URL, stream=stream)
    Messaging(channels=[channel])
    try:
        channel.send(envelope(1))  # no group yet: the first consume makes it
        assert channel.depth() == 1
        assert [d.envelope.body for d in consume_all(channel)] == [b"1"]
        assert channel.depth() == 0
    finally:
        channel.close()


def test_acknowledged_messages_leave_the_stream(
    channels: Callable[..., RedisChannel], client: redis.Redis
) -> None:
    channel = channels()
    for number in range(3):
        channel.send(envelope(number))
    assert channel.depth() == 3

    deliveries = consume_all(channel)

    assert [d.envelope.body for d in deliveries] == [b"0", b"1", b"2"]
    assert not any(d.redelivered for d in deliveries)
    assert channel.depth() == 0
    assert client.xlen(channel.stream) == 0
    assert client.xpending(channel.stream, "busway")["pending"] == 0


def test_a_waiting_consumer_gets_a_message_as_it_arrives(
    channels: Callable[..., RedisChannel],
) -> None:
    consumer, sender = channels(), channels()
    seen: list[Delivery] = []
    started = time.monotonic()
    timer = threading.Timer(0.2, sender.send, [envelope(1)])
    timer.start()

    assert consumer.consume(seen.append, 100, 10.0) == 1

    timer.join()
    assert time.monotonic() - started < 5.0
    assert [d.envelope.body for d in seen] == [b"1"]


async def test_a_waiting_asyncio_consumer_gets_a_message_as_it_arrives(
    channels: Callable[..., RedisChannel],
) -> None:
    consumer, sender = channels(), channels()
    seen: list[Delivery] = []

    async def handle(delivery: Delivery) -> None:
        seen.append(delivery)

    async def send_soon() -> None:
        await asyncio.sleep(0.2)
        await sender.asend(envelope(1))

    started = time.monotonic()
    sending = asyncio.create_task(send_soon())
    try:
        assert await consumer.aconsume(handle, 100, 10.0) == 1
    finally:
        await sending
        await consumer.aclose()
        await sender.aclose()

    assert time.monotonic() - started < 5.0
    assert [d.envelope.body for d in seen] == [b"1"]


def test_a_failed_batch_keeps_its_order_and_acknowledges_what_was_handled(
    channels: Callable[..., RedisChannel],
) -> None:
    channel = channels()
    for number in range(4):
        channel.send(envelope(number))
    handled: list[bytes] = []

    def fail_on_two(delivery: Delivery) -> None:
        if delivery.envelope.body == b"2":
            raise ConnectionAbortedError("the database went away")
        handled.append(delivery.envelope.body)

    with pytest.raises(ConnectionAbortedError):
        channel.consume(fail_on_two, 100, 0)

    assert handled == [b"0", b"1"]
    assert channel.depth() == 2
    again = consume_all(channel)
    assert [(d.envelope.body, d.redelivered) for d in again] == [(b"2", True), (b"3", False)]


def test_stale_pending_messages_are_claimed_by_another_consumer(
    channels: Callable[..., RedisChannel],
) -> None:
    dead, alive = channels(claim_idle=0.2), channels(claim_idle=0.2)
    assert dead.consumer != alive.consumer
    dead.send(envelope(1))

    def die(_delivery: Delivery) -> None:
        raise SystemExit("the consumer dies holding the message")

    read_at = time.monotonic()
    with pytest.raises(SystemExit):
        dead.consume(die, 100, 0)
    dead._stream.take_held(100)  # as if its process were gone

    assert alive.consume(lambda _d: pytest.fail("claimed too early"), 100, 0) == 0
    claimed: list[Delivery] = []
    wait_until(lambda: alive.consume(claimed.append, 100, 0.5) > 0, "the claim", timeout=10)

    assert time.monotonic() - read_at >= 0.2
    assert [(d.envelope.body, d.redelivered) for d in claimed] == [(b"1", True)]
    assert alive.depth() == 0


def test_held_messages_go_back_to_the_stream_when_the_channel_closes(
    channels: Callable[..., RedisChannel], client: redis.Redis
) -> None:
    first, second = channels(), channels()
    first.send(envelope(1))

    def give_back(_delivery: Delivery) -> None:
        raise MessageReturned

    assert first.consume(give_back, 100, 0) == 0
    first.close()

    assert client.xpending(first.stream, "busway")["pending"] == 0
    assert [d.envelope.body for d in consume_all(second)] == [b"1"]
    consumers = [c["name"].decode() for c in client.xinfo_consumers(first.stream, "busway")]
    assert first.consumer not in consumers  # gone from the group, nothing left pending


def test_a_slow_batch_stays_with_its_consumer(channels: Callable[..., RedisChannel]) -> None:
    slow, other = channels(claim_idle=0.3), channels(claim_idle=0.3)
    for number in range(3):
        slow.send(envelope(number))
    claimed_meanwhile: list[int] = []

    def handle(delivery: Delivery) -> None:
        time.sleep(0.15)
        if delivery.envelope.body == b"2":  # 0.45 s after the batch was read
            claimed_meanwhile.append(other.consume(lambda _d: None, 100, 0))

    assert slow.consume(handle, 100, 0) == 3

    assert claimed_meanwhile == [0]
    assert slow.depth() == 0


def test_delayed_messages_move_into_the_stream_when_due(
    channels: Callable[..., RedisChannel], client: redis.Redis
) -> None:
    channel = channels()
    sent = time.time()
    channel.send(envelope(1, deliver_at=sent + 0.3))
    channel.send(envelope(2, deliver_at=sent - 1))  # already due: straight to the stream

    assert client.zcard(f"{channel.stream}:delayed") == 1
    assert client.xlen(channel.stream) == 1
    assert channel.depth() == 2
    assert [d.envelope.body for d in consume_all(channel)] == [b"2"]

    seen: list[Delivery] = []
    started = time.monotonic()
    assert channel.consume(seen.append, 100, 5.0) == 1

    assert time.time() - sent >= 0.3
    assert time.monotonic() - started < 2.0, "the wait did not end when the message fell due"
    assert seen[0].envelope.body == b"1"
    assert seen[0].envelope.deliver_at == pytest.approx(sent + 0.3)
    assert client.zcard(f"{channel.stream}:delayed") == 0
    assert channel.depth() == 0


def test_depth_and_oldest_age(channels: Callable[..., RedisChannel]) -> None:
    channel = channels()
    assert channel.depth() == 0
    assert channel.oldest_age() is None

    channel.send(envelope(1))
    channel.send(envelope(2))
    channel.send(envelope(3, deliver_at=time.time() + 60))
    wait_until(lambda: (channel.oldest_age() or 0) > 0.01, "the message to age")

    assert channel.depth() == 3
    assert channel.consume(lambda _d: None, 1, 0) == 1
    assert channel.depth() == 2
    age = channel.oldest_age()
    assert age is not None and 0 <= age < 10
    assert consume_all(channel)
    assert channel.depth() == 1  # the delayed one
    assert channel.oldest_age() is None  # not due yet


def test_depth_counts_what_is_not_acknowledged_whoever_holds_it(
    channels: Callable[..., RedisChannel], client: redis.Redis
) -> None:
    first, second = channels(batch_size=2), channels(batch_size=2)
    for number in range(5):
        first.send(envelope(number))

    def fail(_delivery: Delivery) -> None:
        raise ConnectionAbortedError("the database went away")

    with pytest.raises(ConnectionAbortedError):
        first.consume(fail, 100, 0)  # 0 and 1 stay pending with the first consumer
    assert second.consume(lambda _d: None, 100, 0) == 2  # 2 and 3 acknowledged

    assert first.depth() == second.depth() == 3
    assert client.xlen(first.stream) == 5  # the acknowledged ones wait behind the pending
    consume_all(first)
    consume_all(second)
    assert first.depth() == 0
    assert client.xlen(first.stream) == 0


def test_two_groups_on_one_stream_each_get_every_message(
    channels: Callable[..., RedisChannel], client: redis.Redis
) -> None:
    billing, shipping = channels(group="billing"), channels(group="shipping")
    for number in range(3):
        billing.send(envelope(number))

    assert len(consume_all(billing)) == 3
    assert billing.depth() == 0
    assert shipping.depth() == 3
    assert client.xlen(billing.stream) == 3  # not trimmed: shipping has not read them

    assert [d.envelope.body for d in consume_all(shipping)] == [b"0", b"1", b"2"]
    consume_all(billing)
    assert client.xlen(billing.stream) == 0


def test_resp2_replies_are_read_alike(channels: Callable[..., RedisChannel]) -> None:
    dead, alive = channels(protocol=2, claim_idle=0.2), channels(protocol=2, claim_idle=0.2)
    dead.send(envelope(1))
    with pytest.raises(SystemExit):
        dead.consume(lambda _d: sys.exit("dies"), 100, 0)
    dead._stream.take_held(100)
    claimed: list[Delivery] = []
    wait_until(lambda: alive.consume(claimed.append, 100, 0.5) > 0, "the claim", timeout=10)
    threading.Timer(0.1, dead.send, [envelope(2)]).start()
    alive.consume(claimed.append, 100, 5.0)

    assert [d.envelope.body for d in claimed] == [b"1", b"2"]
    assert alive.depth() == 0
    assert alive.oldest_age() is None


async def test_the_asyncio_edge(channels: Callable[..., RedisChannel]) -> None:
    channel = channels()
    await channel.asend(envelope(1))
    await channel.asend(envelope(2, deliver_at=time.time() + 0.2))
    seen: list[Delivery] = []

    async def handle(delivery: Delivery) -> None:
        seen.append(delivery)

    assert await channel.aconsume(handle, 100, 0) == 1
    assert await channel.aconsume(handle, 100, 5.0) == 1
    await channel.aclose()

    assert [d.envelope.body for d in seen] == [b"1", b"2"]
    assert channel.depth() == 0


def test_a_header_that_is_not_json_is_refused(channels: Callable[..., RedisChannel]) -> None:
    with pytest.raises(ConversionError, match="not JSON"):
        channels().send(Envelope(b"", {"id": object()}))  # type: ignore[dict-item]


# -- the optional dependency ---------------------------------------------------------------


def test_without_redis_py_the_error_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    for name in list(sys.modules):
        if name == "busway.redis" or name.startswith("busway.channels.redis"):
            monkeypatch.delitem(sys.modules, name)

    with pytest.raises(MissingExtraError) as raised:
        import busway.redis  # noqa: F401

    assert "Redis Streams" in str(raised.value)
    assert "pip install 'busway[redis]'" in str(raised.value)


def test_importing_busway_does_not_import_redis() -> None:
    code = "import sys, busway; assert 'redis' not in sys.modules, 'redis was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- pipelines -----------------------------------------------------------------------------


@dataclass
class OrderWasPlaced:
    order_id: str


@asynchronous("outbox", "redis")
class OrderEvents(EventBus):
    """Events committed to the outbox with the business transaction, then relayed to Redis."""


@pytest.fixture
def pipeline(stream: str, tmp_path: Path) -> Iterator[tuple[Messaging, list[str]]]:
    seen: list[str] = []

    @event_handler
    def order_was_placed(event: OrderWasPlaced) -> None:
        seen.append(event.order_id)

    messaging = Messaging(
        handlers=[order_was_placed],
        channels=[SqlChannel("outbox"), RedisChannel("redis", REDIS_URL, stream=stream)],
        database=f"sqlite:///{tmp_path / 'outbox.db'}",
    )
    messaging.setup()
    yield messaging, seen
    messaging.close()


def test_an_outbox_relays_to_redis(pipeline: tuple[Messaging, list[str]]) -> None:
    messaging, seen = pipeline
    events = messaging.gateway(OrderEvents)
    with messaging.transaction():
        for number in range(150):  # more than one relay batch
            events.publish(OrderWasPlaced(f"o-{number}"))
    with pytest.raises(RuntimeError), messaging.transaction():
        events.publish(OrderWasPlaced("rolled back"))
        raise RuntimeError("the business transaction fails")
    redis_channel = messaging.channel("redis")
    assert redis_channel.depth() == 0

    assert messaging.run("outbox").handled == 150

    assert messaging.channel("outbox").depth() == 0
    assert redis_channel.depth() == 150
    assert messaging.run("redis").handled == 150
    assert seen == [f"o-{number}" for number in range(150)]
    assert redis_channel.depth() == 0


async def test_an_outbox_relays_to_redis_from_asyncio(
    pipeline: tuple[Messaging, list[str]],
) -> None:
    messaging, seen = pipeline
    events = messaging.gateway(OrderEvents)
    try:
        async with messaging.atransaction():
            for number in range(3):
                await events.apublish(OrderWasPlaced(f"o-{number}"))

        assert (await messaging.arun("outbox")).handled == 3
        assert messaging.channel("redis").depth() == 3
        assert (await messaging.arun("redis")).handled == 3
    finally:
        await messaging.aclose()

    assert seen == ["o-0", "o-1", "o-2"]


# -- a relay that cannot send some messages ------------------------------------------------


@asynchronous("outbox", "redis-a")
class ToA(EventBus):
    """Committed to the outbox, then relayed to the stream of ``redis-a``."""


@asynchronous("outbox", "redis-b")
class ToB(EventBus):
    """Committed to the outbox, then relayed to the stream of ``redis-b``."""


@asynchronous("jobs", "redis-a")
class JobsToA(EventBus):
    """Sent to the ``jobs`` stream, then relayed to the stream of ``redis-a``."""


@asynchronous("jobs", "redis-b")
class JobsToB(EventBus):
    """Sent to the ``jobs`` stream, then relayed to the stream of ``redis-b``."""


@dataclass
class SplitRelay:
    """A channel relaying alternately to two Redis streams; ``b`` is broken by default."""

    messaging: Messaging
    client: redis.Redis
    a: str
    b: str
    to_a: type[EventBus]
    to_b: type[EventBus]

    def publish(self, count: int) -> list[str]:
        """Send ``count`` orders to each stream, alternately; their ids."""
        to_a, to_b = self.messaging.gateway(self.to_a), self.messaging.gateway(self.to_b)
        with self.messaging.transaction():
            for number in range(count):
                to_a.publish(OrderWasPlaced(f"a-{number}"))
                to_b.publish(OrderWasPlaced(f"b-{number}"))
        return [f"{side}-{number}" for side in "ab" for number in range(count)]

    def break_b(self) -> None:
        """Make every send to ``b`` fail: its key holds a string, not a stream."""
        self.client.set(self.b, "not a stream")

    def repair_b(self) -> None:
        self.client.delete(self.b)
        self.messaging.setup()

    @property
    def clock(self) -> FakeClock:
        clock = self.messaging.clock
        assert isinstance(clock, FakeClock)
        return clock

    def close(self) -> None:
        self.messaging.close()
        self.client.delete(self.a, self.b, f"{self.a}:delayed", f"{self.b}:delayed")

    def orders(self, key: str) -> list[str]:
        """The orders on a stream, in order, repeats included."""
        decode = msgspec.json.Decoder(OrderWasPlaced).decode
        return [decode(fields[b"body"]).order_id for _, fields in self.client.xrange(key)]


@pytest.fixture
def split_relay(client: redis.Redis, stream: str, tmp_path: Path) -> Iterator[SplitRelay]:
    """An outbox relaying to two streams."""
    relay = _split_relay(client, stream, SqlChannel("outbox"), tmp_path)
    relay.messaging.setup()
    yield relay
    relay.close()


def _split_relay(
    client: redis.Redis, stream: str, source: Channel, tmp_path: Path, b_url: str = REDIS_URL
) -> SplitRelay:
    a, b = f"{stream}:a", f"{stream}:b"
    messaging = Messaging(
        channels=[
            source,
            RedisChannel("redis-a", REDIS_URL, stream=a),
            RedisChannel("redis-b", b_url, stream=b, retries=0),
        ],
        database=f"sqlite:///{tmp_path / 'outbox.db'}",
        clock=FakeClock(time.time()),
    )
    outbox = source.name == "outbox"
    return SplitRelay(messaging, client, a, b, *((ToA, ToB) if outbox else (JobsToA, JobsToB)))


def test_an_outbox_relay_keeps_back_only_what_it_could_not_send(split_relay: SplitRelay) -> None:
    relay, outbox = split_relay, split_relay.messaging.channel("outbox")
    sent = relay.publish(6)
    relay.break_b()

    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        relay.messaging.run("outbox")

    assert outbox.depth() == 6  # exactly the orders for b
    assert relay.orders(relay.a) == [f"a-{number}" for number in range(6)]

    relay.repair_b()
    assert relay.messaging.run("outbox").handled == 0  # kept back for a while
    relay.clock.advance(60)
    assert relay.messaging.run("outbox").handled == 6

    assert outbox.depth() == 0
    assert relay.orders(relay.a) + relay.orders(relay.b) == sent  # each once


async def test_an_asyncio_outbox_relay_keeps_back_only_what_it_could_not_send(
    split_relay: SplitRelay,
) -> None:
    relay, outbox = split_relay, split_relay.messaging.channel("outbox")
    sent = relay.publish(6)
    relay.break_b()
    try:
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await relay.messaging.arun("outbox")

        assert outbox.depth() == 6
        assert relay.orders(relay.a) == [f"a-{number}" for number in range(6)]

        relay.repair_b()
        relay.clock.advance(60)
        assert (await relay.messaging.arun("outbox")).handled == 6
    finally:
        await relay.messaging.aclose()

    assert outbox.depth() == 0
    assert relay.orders(relay.a) + relay.orders(relay.b) == sent


def test_a_relay_that_cannot_reach_redis_keeps_back_what_it_sent_there(
    client: redis.Redis, stream: str, tmp_path: Path
) -> None:
    relay = _split_relay(client, stream, SqlChannel("outbox"), tmp_path, "redis://127.0.0.1:1/0")
    outbox = relay.messaging.channel("outbox")
    try:
        outbox.setup()
        relay.messaging.channel("redis-a").setup()
        relay.publish(3)

        with pytest.raises(redis.ConnectionError):
            relay.messaging.run("outbox")

        assert outbox.depth() == 3
        assert relay.orders(relay.a) == ["a-0", "a-1", "a-2"]
    finally:
        relay.close()


def test_a_redis_consumer_that_relays_acknowledges_what_it_sent_on(
    client: redis.Redis, stream: str, tmp_path: Path
) -> None:
    jobs_channel = RedisChannel("jobs", REDIS_URL, stream=stream, claim_idle=0.2)
    relay = _split_relay(client, stream, jobs_channel, tmp_path)
    jobs = relay.messaging.channel("jobs")
    try:
        relay.messaging.setup()
        sent = relay.publish(4)
        relay.break_b()

        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            relay.messaging.run("jobs")

        assert jobs.depth() == 4
        assert client.xpending(stream, "busway")["pending"] == 4  # left pending, unacknowledged
        assert relay.orders(relay.a) == ["a-0", "a-1", "a-2", "a-3"]
        # Set back, so that the claim to come counts no death: the consumer is alive.
        pending = client.xpending_range(stream, "busway", "-", "+", 10)
        assert [entry["times_delivered"] for entry in pending] == [0, 0, 0, 0]

        relay.repair_b()
        # Left pending, not held: claimed again once idle for claim_idle.
        again = relay.messaging.run("jobs", until_empty=False, limit=4, time_limit=30)
        assert again.handled == 4

        assert jobs.depth() == 0
        assert relay.orders(relay.a) + relay.orders(relay.b) == sent
    finally:
        relay.close()


async def test_an_asyncio_redis_consumer_that_relays_acknowledges_what_it_sent_on(
    client: redis.Redis, stream: str, tmp_path: Path
) -> None:
    jobs_channel = RedisChannel("jobs", REDIS_URL, stream=stream, claim_idle=0.2)
    relay = _split_relay(client, stream, jobs_channel, tmp_path)
    jobs = relay.messaging.channel("jobs")
    try:
        await relay.messaging.asetup()
        sent = relay.publish(4)
        relay.break_b()

        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await relay.messaging.arun("jobs")

        assert jobs.depth() == 4
        assert relay.orders(relay.a) == ["a-0", "a-1", "a-2", "a-3"]

        relay.repair_b()
        again = await relay.messaging.arun("jobs", until_empty=False, limit=4, time_limit=30)
        assert again.handled == 4
        await relay.messaging.aclose()

        assert jobs.depth() == 0
        assert relay.orders(relay.a) + relay.orders(relay.b) == sent
    finally:
        relay.close()


# -- worker processes killed mid-relay and mid-handler -------------------------------------


def start_redis_worker(role: str, stream: str, database: str, name: str, *options: str) -> Any:
    """A worker process of ``redis_worker`` in ``role``, named ``name``."""
    return start_worker(HERE, "redis_worker", role, REDIS_URL, stream, database, name, *options)


@pytest.fixture
def application(stream: str, tmp_path: Path) -> Iterator[tuple[str, Messaging]]:
    """A SQLite database shared with worker processes, and their application."""
    database = f"sqlite:///{tmp_path / 'effects.db'}"
    messaging = redis_worker.build(REDIS_URL, stream, database, "final", claim_idle=0.3)
    messaging.setup()
    with messaging.database_engine.begin() as connection:
        redis_worker.metadata.create_all(connection)
    yield database, messaging
    messaging.close()


def handled_by(database: str) -> dict[int, str]:
    """Which worker handled each record."""
    engine = create_engine(database)
    try:
        with engine.connect() as connection:
            table = redis_worker.handled
            return dict(connection.execute(select(table.c.id, table.c.worker)).all())
    finally:
        engine.dispose()


def records_on(client: redis.Redis, stream: str) -> list[int]:
    """The ids of the records on ``stream``, in order, repeats included."""
    decode = msgspec.json.Decoder(redis_worker.Record).decode
    return [decode(fields[b"body"]).id for _, fields in client.xrange(stream)]


def test_a_relay_killed_between_send_and_delete_loses_nothing(
    application: tuple[str, Messaging], client: redis.Redis, stream: str, tmp_path: Path
) -> None:
    database, messaging = application
    total = 40
    outbox = messaging.channel("outbox")
    bus = messaging.gateway(redis_worker.OutboxWorkBus)
    with messaging.transaction():
        for number in range(total):
            bus.send(redis_worker.Record(number))

    marker = tmp_path / "sent"
    relay = start_redis_worker(
        "relay", stream, database, "relay", "--block-at", "1", "--marker", str(marker)
    )
    kill_when(marker, relay)

    # The batch's pipeline reached Redis whole; the outbox never deleted the batch.
    assert records_on(client, stream) == list(range(total))
    assert outbox.depth() == total

    assert messaging.run("outbox").handled == total
    assert outbox.depth() == 0
    assert records_on(client, stream) == [*range(total), *range(total)]  # the inbox absorbs it

    assert messaging.run("work").failed == 0

    assert handled_by(database) == {number: "final" for number in range(total)}
    assert client.xlen(stream) == 0
    assert client.xpending(stream, "busway")["pending"] == 0
    assert messaging.dead_letters.list() == []


def test_a_consumer_killed_mid_handler_loses_nothing_and_repeats_nothing(
    application: tuple[str, Messaging], client: redis.Redis, stream: str, tmp_path: Path
) -> None:
    database, messaging = application
    total, batch, block_at = 20, 5, 7
    bus = messaging.gateway(redis_worker.WorkBus)
    for number in range(total):
        bus.send(redis_worker.Record(number))

    marker = tmp_path / "mid-handler"
    worker = start_redis_worker(
        "consume", stream, database, "killed", "--batch-size", str(batch),
        "--block-at", str(block_at), "--marker", str(marker),
    )  # fmt: skip
    in_hand = int(kill_when(marker, worker))

    # The first batch was acknowledged; the second is pending for the dead consumer, one of
    # its messages handled (its row and inbox record committed), one in hand.
    assert client.xlen(stream) == total - batch
    assert client.xpending(stream, "busway")["pending"] == batch
    assert in_hand == block_at - 1

    result = messaging.run("work", until_empty=False, limit=total - batch, time_limit=30)
    assert result.handled == total - batch
    assert messaging.dead_letters.list() == []
    assert messaging.channel("work").depth() == 0
    assert client.xpending(stream, "busway")["pending"] == 0

    rows = handled_by(database)
    assert sorted(rows) == list(range(total))  # each once: the primary key allows no more
    assert rows[in_hand - 1] == "killed"  # handled before the kill, not again after
    assert rows[in_hand] == "final"


# -- a handler that kills its worker, workers restarted in a loop --------------------------

MAX_CRASHES = 2  # the least: the poisoned message's batch-mates count one death each
GOOD, POISON = 10, 4


def restart_until_drained(stream: str, database: str, *options: str) -> int:
    """Start a worker, again each time one dies; how many died. Fails past the bound."""
    return deaths_until_drained(
        lambda restart: start_redis_worker(
            "drain",
            stream,
            database,
            f"w{restart}",
            "--batch-size",
            "4",
            "--poison",
            str(POISON),
            "--max-crashes",
            str(MAX_CRASHES),
            "--claim-idle",
            "0.3",
            *options,
        ),
        MAX_CRASHES,
    )


@pytest.mark.parametrize("front_door", ["run", "arun"])
def test_a_message_that_kills_its_worker_is_dead_lettered_after_max_crashes(
    application: tuple[str, Messaging], client: redis.Redis, stream: str, front_door: str
) -> None:
    database, messaging = application
    bus = messaging.gateway(redis_worker.WorkBus)
    for number in range(GOOD + 1):
        bus.send(redis_worker.Record(number))

    deaths = restart_until_drained(stream, database, *(["--asyncio"] * (front_door == "arun")))

    assert deaths == MAX_CRASHES
    good = [number for number in range(GOOD + 1) if number != POISON]
    assert sorted(handled_by(database)) == good  # each once: the primary key allows no more
    assert messaging.channel("work").depth() == 0
    assert client.xpending(stream, "busway")["pending"] == 0
    letters = messaging.dead_letters.list()
    assert [letter.body for letter in letters] == [b'{"id":%d}' % POISON]
    assert letters[0].error_type == "busway.errors.WorkerDiedError"
    assert f"the worker died {MAX_CRASHES} times handling it" in letters[0].error_message


def test_a_graceful_stop_counts_no_death(channels: Callable[..., RedisChannel]) -> None:
    """Entries given back at a stop, or left pending after a failed send, are not deaths."""
    first = channels(claim_idle=0.2)
    for number in range(3):
        first.send(Envelope(b"%d" % number, {}))

    def stop(delivery: Delivery) -> None:
        raise MessageReturned

    assert first.consume(stop, 10, 1) == 0  # all three held, then given back at close
    first.close()
    seen: list[tuple[bytes, int]] = []
    second = channels(claim_idle=0.2)
    second.consume(lambda delivery: seen.append((delivery.envelope.body, delivery.crashes)), 10, 1)
    assert seen == [(b"0", 0), (b"1", 0), (b"2", 0)]


def test_a_claimed_entry_counts_the_deliveries_before_it(
    channels: Callable[..., RedisChannel], client: redis.Redis
) -> None:
    dead = channels(claim_idle=0.1)
    for number in range(3):
        dead.send(Envelope(b"%d" % number, {}))
    stream = dead.stream
    client.xreadgroup("busway", "dead", {stream: ">"}, count=3)  # a consumer that died
    seen: list[tuple[bytes, int]] = []
    alive = channels(claim_idle=0.1)

    def note(delivery: Delivery) -> None:
        seen.append((delivery.envelope.body, delivery.crashes))

    deadline = time.monotonic() + 10
    while len(seen) < 3 and time.monotonic() < deadline:
        alive.consume(note, 10, 0.2)
    # Each suspect alone, in order; a held one is not claimed again by its holder.
    assert seen == [(b"0", 1), (b"1", 1), (b"2", 1)]
    assert client.xpending(stream, "busway")["pending"] == 0


# -- Redis restarted in the middle of a run ------------------------------------------------

REDIS_SERVER = [
    "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379",
    "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis",
    "--logfile", "/var/log/redis/ci.log",
]  # fmt: skip


def _wait_for_redis(up: bool, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while (_ping() is None) != up:
        if time.monotonic() > deadline:
            raise TimeoutError(f"Redis did not {'start' if up else 'stop'} in {timeout} s")
        time.sleep(0.02)


class RedisServer:
    """The Redis server on loopback, stopped and started again as CI runs it."""

    def stop(self) -> None:
        subprocess.run(["redis-cli", "-p", "6379", "shutdown", "nosave"], check=False)
        _wait_for_redis(up=False)

    def start(self) -> None:
        subprocess.run(REDIS_SERVER, check=True)
        _wait_for_redis(up=True)


@pytest.fixture
def redis_server(client: redis.Redis, redis_in_use: IO[str]) -> Iterator[RedisServer]:
    """Redis to restart; it is running when the test ends, whatever happens."""
    if REDIS_URL != "redis://127.0.0.1:6379/0" or not shutil.which("redis-server"):
        _problem("restarting Redis needs redis-server on this machine, serving port 6379")
    server = RedisServer()
    fcntl.flock(redis_in_use, fcntl.LOCK_EX)  # once no other test run is using Redis
    try:
        yield server
    finally:
        if _ping() is not None:
            server.start()


@dataclass
class Ping:
    number: int


@asynchronous("pings")
class Pings(EventBus):
    pass


def test_publishers_and_workers_reconnect_after_redis_restarts(
    redis_server: RedisServer, stream: str
) -> None:
    """Redis restarted without persistence loses what it held; busway carries on."""
    seen: dict[str, list[int]] = {"sync": [], "asyncio": []}

    def make(name: str) -> Messaging:
        @event_handler
        def ping(event: Ping) -> None:
            seen[name].append(event.number)

        channel = RedisChannel("pings", REDIS_URL, stream=f"{stream}:{name}", max_backoff=0.5)
        messaging = Messaging(handlers=[ping], channels=[channel])
        messaging.setup()
        return messaging

    sync_side, async_side = make("sync"), make("asyncio")
    publishers = [sync_side.gateway(Pings), async_side.gateway(Pings)]
    workers = [
        side.worker("pings", until_empty=False, poll_interval=0.2)
        for side in (sync_side, async_side)
    ]

    async def arun() -> None:
        try:
            await workers[1].arun()
        finally:
            await async_side.aclose()

    threads = [
        threading.Thread(target=workers[0].run),
        threading.Thread(target=asyncio.run, args=(arun(),)),
    ]
    for thread in threads:
        thread.start()

    def publish(number: int) -> None:
        for publisher in publishers:
            publisher.publish(Ping(number))

    try:
        publish(1)
        wait_until(lambda: seen == {"sync": [1], "asyncio": [1]}, "the first pings")

        redis_server.stop()
        during = threading.Thread(target=publish, args=(2,))
        during.start()  # retries with back-off until Redis is back
        time.sleep(0.3)
        assert during.is_alive(), "the publishers did not wait for Redis to come back"
        redis_server.start()
        during.join(timeout=30)
        publish(3)

        wait_until(lambda: seen == {"sync": [1, 2, 3], "asyncio": [1, 2, 3]}, "pings after")
    finally:
        for worker in workers:
            worker.stop()
        for thread in threads:
            thread.join(timeout=30)
        sync_side.close()
    redis.Redis.from_url(REDIS_URL).delete(f"{stream}:sync", f"{stream}:asyncio")


# -- handler time limits -------------------------------------------------------------------


@dataclass
class Chore:
    id: str


@dataclass
class AsyncChore:
    id: str


@pytest.mark.timeout(120, method="thread")  # leaves SIGALRM to the worker (def under arun)
@pytest.mark.parametrize("runner", ["run", "arun"])
async def test_a_hanging_handler_is_dead_lettered_not_claimed_again_for_ever(
    stream: str, runner: str
) -> None:
    from busway import CommandBus, RetryPolicy, command_handler

    release = threading.Event()
    calls: list[str] = []

    @command_handler
    def chore(job: Chore) -> None:
        calls.append(job.id)
        if job.id == "hang":
            release.wait(60)

    @command_handler
    async def async_chore(job: AsyncChore) -> None:
        calls.append(f"async {job.id}")
        if job.id == "hang":
            await asyncio.sleep(60)

    @asynchronous("jobs")
    class Chores(CommandBus):
        pass

    messaging = Messaging(
        handlers=[chore, async_chore],
        channels=[RedisChannel("jobs", REDIS_URL, stream=stream, claim_idle=0.2)],
        retry=RetryPolicy(retries=1, initial_delay=0, jitter=0),
    )
    messaging.setup()
    bus = messaging.gateway(Chores)
    for job in (Chore("a"), Chore("hang"), AsyncChore("b"), AsyncChore("hang"), Chore("c")):
        bus.send(job)
    try:
        if runner == "run":
            result = await asyncio.to_thread(messaging.run, "jobs", handler_timeout=0.5)
        else:
            result = await messaging.arun("jobs", handler_timeout=0.5)
        left = messaging.channel("jobs").depth()  # nothing pending, nothing to claim again
    finally:
        release.set()
        await messaging.aclose()
    assert left == 0

    assert (result.handled, result.failed) == (7, 4)  # 5 messages, 2 retries
    assert sorted(calls) == ["a", "async b", "async hang", "async hang", "c", "hang", "hang"]
    letters = messaging.dead_letters.list()
    assert [letter.error_type for letter in letters] == ["busway.errors.HandlerTimeout"] * 2
    assert {letter.attempts for letter in letters} == {2}
