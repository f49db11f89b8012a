"""NatsChannel against the real NATS JetStream server on loopback.

The server's address comes from ``BUSWAY_TEST_NATS_URL`` (default ``nats://127.0.0.1:4222``).
An unreachable server skips these tests, except on CI (``CI=true``), where it fails them.
Every test works on streams of its own, named ``test_busway_<pid>_...``, deleted afterwards.
Every test holds a lock on NATS, shared; the test that restarts nats-server holds it
exclusively, so that test runs side by side never restart NATS under each other's feet.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import urlsplit

import nats
import nats_worker
import pytest
from nats.js.api import DiscardPolicy
from sqlalchemy import create_engine, select

from busway import (
    CommandBus,
    EventBus,
    Messaging,
    SqlChannel,
    asynchronous,
    command_handler,
    event_handler,
)
from busway.channels.base import Channel, Delivery, Envelope
from busway.errors import BuswayError, ConfigurationError, MissingExtraError
from busway.message import DELIVER_AT
from busway.nats import NatsChannel
from busway.testing import ChannelContract, FakeClock
from busway.testing.conformance import ChannelFactory
from workers import deaths_until_drained, kill_when, start_worker

URL = os.environ.get("BUSWAY_TEST_NATS_URL", "nats://127.0.0.1:4222")
PREFIX = "test_busway_"
RESTART_LOCK = Path(tempfile.gettempdir()) / "busway-nats-restart.lock"
HERE = Path(__file__).parent
SERVER_START = [
    "start-stop-daemon", "--start", "--oknodo", "--background",
    "--exec", "/usr/sbin/nats-server", "--",
    "-a", "127.0.0.1", "-p", "4222", "-js",
    "-sd", "/var/lib/nats-server", "-l", "/var/log/nats-server.log",
]  # fmt: skip

T = TypeVar("T")


def _address() -> tuple[str, int]:
    parts = urlsplit(URL)
    return parts.hostname or "127.0.0.1", parts.port or 4222


def _port_answers() -> bool:
    try:
        socket.create_connection(_address(), timeout=1).close()
    except OSError:
        return False
    return True


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on a fresh event loop in a thread of its own (a test's loop may run)."""
    result: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coroutine))
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def _left_behind(stream: str) -> bool:
    """Whether ``stream`` is a test stream whose test run has ended."""
    if not stream.startswith(PREFIX):
        return False
    run = stream.removeprefix(PREFIX).split("_")[0]
    if not run.isdigit():
        return True  # named before streams carried the process id of their run
    try:
        os.kill(int(run), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, and another user's
        pass
    return False


async def _delete_streams(names: list[str] | None) -> None:
    """Delete the named streams, or (``None``) every stream an ended test run left behind."""
    client = await nats.connect(URL)
    try:
        js = client.jetstream()
        if names is None:
            found = [info.config.name for info in await js.streams_info()]
            names = [name for name in found if name and _left_behind(name)]
        for name in names:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(name)
    finally:
        await client.close()


async def _limit_stream(stream: str, max_msgs: int) -> None:
    """Let ``stream`` hold ``max_msgs`` messages and refuse any more (-1: no limit)."""
    client = await nats.connect(URL)
    try:
        js = client.jetstream()
        config = (await js.stream_info(stream)).config
        config.max_msgs, config.discard = max_msgs, DiscardPolicy.NEW
        await js.update_stream(config)
    finally:
        await client.close()


@pytest.fixture(scope="module", autouse=True)
def nats_server() -> None:
    with open(RESTART_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)  # not while another test run restarts the server
        if not _port_answers():
            message = f"NATS is not running at {URL}; the NATS tests need it (-js enabled)"
            if os.environ.get("CI") == "true":
                pytest.fail(f"CI: {message}", pytrace=False)
            pytest.skip(message)
        run_async(_delete_streams(None))


@pytest.fixture(autouse=True)
def nats_in_use() -> Iterator[IO[str]]:
    """A lock held shared while a test uses NATS, exclusively while one restarts it: test
    runs side by side on this machine never restart nats-server under each other's feet."""
    with open(RESTART_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        yield lock  # closing the file releases the lock


@pytest.fixture
def streams() -> Iterator[Callable[[], str]]:
    """A new stream name each call; the streams are deleted when the test ends."""
    made: list[str] = []

    def new() -> str:
        made.append(f"{PREFIX}{os.getpid()}_{uuid.uuid4().hex[:12]}")
        return made[-1]

    yield new
    if made and _port_answers():
        run_async(_delete_streams(made))


def nats_channel(name: str, stream: str, **options: Any) -> NatsChannel:
    return NatsChannel(name, URL, stream=stream, subject=f"{stream}.{name}", **options)


class TestNatsChannel(ChannelContract):
    @pytest.fixture
    def channel_factory(self, streams: Callable[[], str]) -> ChannelFactory:
        return lambda name: nats_channel(name, streams())


# -- the channel on its own ------------------------------------------------------------------


@pytest.fixture
def channel(streams: Callable[[], str]) -> Iterator[NatsChannel]:
    made = nats_channel("jobs", streams(), ack_wait=2.0)
    Messaging(channels=[made])  # attaches the clock
    made.setup()
    yield made
    made.close()


def envelope(number: int, **headers: Any) -> Envelope:
    return Envelope(f'{{"number":{number}}}'.encode(), {"busway.id": str(number), **headers})


def depth_settles_at(channel: Channel, expected: int) -> bool:
    """Whether ``depth()`` comes to ``expected``: the server counts acks a moment after they
    arrive, so a depth asked for right after a consume may still count them."""
    deadline = time.monotonic() + 5
    while (depth := channel.depth()) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return depth == expected


def take(channel: NatsChannel, count: int, wait: float = 0.0) -> list[Delivery]:
    seen: list[Delivery] = []
    channel.consume(seen.append, count, wait)
    return seen


def test_setup_is_idempotent_and_keeps_messages(channel: NatsChannel) -> None:
    channel.send(envelope(1))

    channel.setup()
    channel.setup()

    assert channel.depth() == 1
    (delivery,) = take(channel, 10)
    assert delivery.envelope.body == b'{"number":1}'


def test_setup_changes_the_ack_wait_of_the_consumer(channel: NatsChannel) -> None:
    changed = nats_channel("jobs", channel.stream, ack_wait=7.0)
    Messaging(channels=[changed])
    try:
        changed.setup()

        async def ack_wait() -> float:
            client = await nats.connect(URL)
            info = await client.jetstream().consumer_info(channel.stream, channel.durable)
            await client.close()
            return float(info.config.ack_wait or 0)

        assert run_async(ack_wait()) == 7.0
    finally:
        changed.close()


def test_headers_come_back_typed(channel: NatsChannel) -> None:
    headers = {"text": "Zürich ☃ 東京\nline two", "n": 3, "x": 0.25, "yes": True, "none": None}
    channel.send(envelope(1, **headers))

    (delivery,) = take(channel, 1)

    assert {key: delivery.envelope.headers[key] for key in headers} == headers
    assert delivery.redelivered is False


def test_depth_counts_waiting_and_unacknowledged_messages(channel: NatsChannel) -> None:
    for number in range(5):
        channel.send(envelope(number))
    assert channel.depth() == 5

    take(channel, 2)

    assert depth_settles_at(channel, 3)


def test_a_delayed_message_is_given_back_until_it_is_due(channel: NatsChannel) -> None:
    sent = time.time()
    channel.send(envelope(1, **{DELIVER_AT: sent + 0.8}))
    channel.send(envelope(2))

    early = take(channel, 10)

    assert [d.envelope.body for d in early] == [b'{"number":2}']
    assert depth_settles_at(channel, 1)  # held back by the server, not lost
    deadline = time.monotonic() + 10
    due: list[Delivery] = []
    while not due and time.monotonic() < deadline:
        due = take(channel, 10, wait=1.0)
    assert [d.envelope.body for d in due] == [b'{"number":1}']
    assert time.time() - sent >= 0.8
    assert depth_settles_at(channel, 0)


def test_a_full_stream_refuses_a_send_at_once(channel: NatsChannel) -> None:
    run_async(_limit_stream(channel.stream, 1))
    channel.send(envelope(1))
    started = time.monotonic()

    with pytest.raises(BuswayError, match="refused a message"):
        channel.send(envelope(2))

    assert time.monotonic() - started < channel.timeout  # not tried again and again
    assert channel.depth() == 1


def test_a_failed_handler_gives_the_batch_back(channel: NatsChannel) -> None:
    for number in range(3):
        channel.send(envelope(number))

    def fail_on_second(delivery: Delivery) -> None:
        if delivery.envelope.body == b'{"number":1}':
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        channel.consume(fail_on_second, 10, 0.0)

    again: list[Delivery] = []
    deadline = time.monotonic() + 10
    while len(again) < 2 and time.monotonic() < deadline:  # nak'd messages return one by one
        again += take(channel, 10, wait=1.0)
    assert sorted(d.envelope.body for d in again) == [b'{"number":1}', b'{"number":2}']
    assert all(d.redelivered for d in again)


@dataclass
class Job:
    number: int


@asynchronous("jobs")
class Jobs(CommandBus):
    """Sends every command through the ``jobs`` NATS channel."""


def test_concurrent_consumers_share_the_stream(streams: Callable[[], str]) -> None:
    seen: list[int] = []

    @command_handler
    def work(job: Job) -> None:
        time.sleep(0.001)  # give the other consumers a turn
        seen.append(job.number)

    messaging = Messaging(handlers=[work], channels=[nats_channel("jobs", streams())])
    messaging.setup()
    try:
        bus = messaging.gateway(Jobs)
        for number in range(200):
            bus.send(Job(number))

        messaging.run("jobs", concurrency=3)

        assert sorted(seen) == list(range(200))
        assert depth_settles_at(messaging.channel("jobs"), 0)
    finally:
        messaging.close()


def test_busway_imports_no_nats_driver() -> None:
    code = "import sys, busway; assert 'nats' not in sys.modules, 'nats was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_missing_nats_driver_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "nats", None)
    for module in ("busway.nats", "busway.channels.nats"):
        monkeypatch.delitem(sys.modules, module, raising=False)

    with pytest.raises(MissingExtraError) as raised:
        import busway.nats  # noqa: F401

    assert "pip install 'busway[nats]'" in str(raised.value)
    assert "NATS" in str(raised.value)


def test_an_unknown_stream_is_reported_with_its_fix(streams: Callable[[], str]) -> None:
    missing = nats_channel("jobs", streams(), timeout=1.0)
    Messaging(channels=[missing])
    try:
        with pytest.raises(Exception, match=r"does not exist.*setup"):
            missing.consume(lambda _delivery: None, 1, 0.0)
    finally:
        missing.close()


def test_a_send_to_a_missing_stream_is_reported_with_its_fix(streams: Callable[[], str]) -> None:
    missing = nats_channel("jobs", streams(), timeout=1.0)
    Messaging(channels=[missing])

    async def send_from_asyncio() -> None:
        try:
            await missing.asend(envelope(2))
        finally:
            await missing.aclose()

    try:
        with pytest.raises(ConfigurationError, match=r"does not exist.*setup"):
            missing.send(envelope(1))
        with pytest.raises(ConfigurationError, match=r"does not exist.*setup"):
            run_async(send_from_asyncio())
    finally:
        missing.close()


# -- outbox to NATS --------------------------------------------------------------------------


@dataclass
class PlaceOrder:
    number: int


@dataclass
class OrderPlaced:
    number: int


@asynchronous("outbox", "nats")
class OrderEvents(EventBus):
    """Committed to the outbox with the business transaction, then relayed to NATS."""


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(time.time())


@pytest.fixture
def pipeline(
    tmp_path: Path, streams: Callable[[], str], clock: FakeClock
) -> Iterator[tuple[Messaging, list[int]]]:
    delivered: list[int] = []

    @command_handler
    def place_order(command: PlaceOrder, events: OrderEvents) -> None:
        events.publish(OrderPlaced(command.number))
        if command.number < 0:
            raise ValueError("refused")

    @event_handler
    def order_placed(event: OrderPlaced) -> None:
        delivered.append(event.number)

    messaging = Messaging(
        handlers=[place_order, order_placed],
        channels=[SqlChannel("outbox"), nats_channel("nats", streams())],
        database=f"sqlite:///{tmp_path / 'outbox.db'}",
        clock=clock,
    )
    messaging.setup()
    yield messaging, delivered
    messaging.close()


def test_the_outbox_is_relayed_to_nats(pipeline: tuple[Messaging, list[int]]) -> None:
    messaging, delivered = pipeline
    for number in range(1, 6):
        messaging.command_bus.send(PlaceOrder(number))
    with pytest.raises(ValueError):
        messaging.command_bus.send(PlaceOrder(-1))  # rolled back: its event never leaves

    assert messaging.channel("nats").depth() == 0
    assert messaging.run("outbox").handled == 5
    assert messaging.channel("outbox").depth() == 0
    assert messaging.channel("nats").depth() == 5

    messaging.run("nats")

    assert delivered == [1, 2, 3, 4, 5]


async def test_the_outbox_is_relayed_to_nats_from_asyncio(
    pipeline: tuple[Messaging, list[int]],
) -> None:
    messaging, delivered = pipeline
    for number in range(1, 4):
        await messaging.command_bus.asend(PlaceOrder(number))
    try:
        assert (await messaging.arun("outbox")).handled == 3
        await messaging.arun("nats")
    finally:
        await messaging.aclose()

    assert delivered == [1, 2, 3]


def test_a_relay_to_an_unreachable_server_leaves_the_outbox_as_it_was(tmp_path: Path) -> None:
    @command_handler
    def place_order(command: PlaceOrder, events: OrderEvents) -> None:
        events.publish(OrderPlaced(command.number))

    messaging = Messaging(
        handlers=[place_order],
        channels=[SqlChannel("outbox"), NatsChannel("nats", "nats://127.0.0.1:9", timeout=0.5)],
        database=f"sqlite:///{tmp_path / 'outbox.db'}",
    )
    messaging.channel("outbox").setup()
    try:
        for number in range(3):
            messaging.command_bus.send(PlaceOrder(number))

        with pytest.raises(ConnectionError, match="cannot connect"):
            messaging.run("outbox")

        assert messaging.channel("outbox").depth() == 3
    finally:
        messaging.close()


def test_a_relay_keeps_back_only_the_messages_jetstream_refused(
    pipeline: tuple[Messaging, list[int]], clock: FakeClock
) -> None:
    messaging, delivered = pipeline
    outbox, relayed = messaging.channel("outbox"), messaging.channel("nats")
    assert isinstance(relayed, NatsChannel)
    run_async(_limit_stream(relayed.stream, 3))
    for number in range(1, 6):
        messaging.command_bus.send(PlaceOrder(number))

    with pytest.raises(BuswayError, match="refused a message"):
        messaging.run("outbox")

    assert outbox.depth() == 2  # 4 and 5, kept back; 1 to 3 are on the stream, once each
    assert relayed.depth() == 3
    run_async(_limit_stream(relayed.stream, -1))
    assert messaging.run("outbox").handled == 0  # not yet: they wait a while
    clock.advance(2)
    assert messaging.run("outbox").handled == 2
    assert outbox.depth() == 0
    assert relayed.depth() == 5
    messaging.run("nats")
    assert delivered == [1, 2, 3, 4, 5]


async def test_a_relay_from_asyncio_keeps_back_only_the_messages_jetstream_refused(
    pipeline: tuple[Messaging, list[int]], clock: FakeClock
) -> None:
    messaging, delivered = pipeline
    outbox, relayed = messaging.channel("outbox"), messaging.channel("nats")
    assert isinstance(relayed, NatsChannel)
    await _limit_stream(relayed.stream, 3)
    try:
        for number in range(1, 6):
            await messaging.command_bus.asend(PlaceOrder(number))

        with pytest.raises(BuswayError, match="refused a message"):
            await messaging.arun("outbox")

        assert outbox.depth() == 2
        assert await relayed.adepth() == 3
        await _limit_stream(relayed.stream, -1)
        assert (await messaging.arun("outbox")).handled == 0
        clock.advance(2)
        assert (await messaging.arun("outbox")).handled == 2
        assert outbox.depth() == 0
        assert await relayed.adepth() == 5
        await messaging.arun("nats")
    finally:
        await messaging.aclose()
    assert delivered == [1, 2, 3, 4, 5]


async def _add_subject(stream: str, subject: str) -> None:
    client = await nats.connect(URL)
    try:
        js = client.jetstream()
        config = (await js.stream_info(stream)).config
        config.subjects = [*(config.subjects or []), subject]
        await js.update_stream(config)
    finally:
        await client.close()


def test_a_relay_keeps_back_the_messages_never_acknowledged_in_time(
    tmp_path: Path, streams: Callable[[], str], clock: FakeClock
) -> None:
    stream = streams()
    other = nats_channel("other", stream)
    other.setup()  # the stream, which does not take the relay's subject
    other.close()
    relayed = NatsChannel(
        "nats", URL, stream=stream, subject=f"{stream}.elsewhere", reconnect_timeout=0.5
    )

    @command_handler
    def place_order(command: PlaceOrder, events: OrderEvents) -> None:
        events.publish(OrderPlaced(command.number))

    messaging = Messaging(
        handlers=[place_order],
        channels=[SqlChannel("outbox"), relayed],
        database=f"sqlite:///{tmp_path / 'outbox.db'}",
        clock=clock,
    )
    outbox = messaging.channel("outbox")
    outbox.setup()
    try:
        for number in range(3):
            messaging.command_bus.send(PlaceOrder(number))

        with pytest.raises(ConnectionError, match="no publish ack"):
            messaging.run("outbox")

        assert outbox.depth() == 3
        run_async(_add_subject(stream, relayed.subject))
        clock.advance(2)
        assert messaging.run("outbox").handled == 3
        assert outbox.depth() == 0
        assert run_async(_stored(stream)) == 3
    finally:
        messaging.close()


async def _stored(stream: str) -> int:
    client = await nats.connect(URL)
    try:
        return int((await client.jetstream().stream_info(stream)).state.messages)
    finally:
        await client.close()


@dataclass
class OrderAudited:
    number: int


@asynchronous("outbox", "audit")
class AuditEvents(EventBus):
    """Committed to the outbox with the business transaction, then relayed to a second stream."""


def test_a_relay_keeps_back_the_messages_for_a_stream_that_is_missing(
    tmp_path: Path, streams: Callable[[], str], clock: FakeClock
) -> None:
    @command_handler
    def place_order(command: PlaceOrder, events: OrderEvents, audit: AuditEvents) -> None:
        events.publish(OrderPlaced(command.number))
        audit.publish(OrderAudited(command.number))

    messaging = Messaging(
        handlers=[place_order],
        channels=[
            SqlChannel("outbox"),
            nats_channel("nats", streams()),
            nats_channel("audit", streams()),
        ],
        database=f"sqlite:///{tmp_path / 'outbox.db'}",
        clock=clock,
        auto_setup=False,  # a stream left missing
    )
    outbox, relayed, audit = (messaging.channel(name) for name in ("outbox", "nats", "audit"))
    outbox.setup()
    relayed.setup()  # and not the audit stream
    try:
        for number in range(3):
            messaging.command_bus.send(PlaceOrder(number))

        with pytest.raises(ConfigurationError, match="does not exist"):
            messaging.run("outbox")

        assert outbox.depth() == 3  # the audit events
        assert relayed.depth() == 3
        audit.setup()
        clock.advance(2)
        assert messaging.run("outbox").handled == 3
        assert outbox.depth() == 0
        assert relayed.depth() == 3
        assert audit.depth() == 3
    finally:
        messaging.close()


# -- processes and servers that die -----------------------------------------------------------


def _effects(database: str) -> list[int]:
    engine = create_engine(database)
    try:
        with engine.connect() as connection:
            return sorted(connection.execute(select(nats_worker.effects.c.id)).scalars())
    finally:
        engine.dispose()


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def _application(stream: str, database: str) -> Messaging:
    """The application of the worker processes, its stream and tables set up."""
    messaging = nats_worker.build(URL, stream, database)
    messaging.setup()
    with messaging.database_engine.begin() as connection:
        nats_worker.metadata.create_all(connection)
    return messaging


def _start_worker(role: str, stream: str, database: str, *options: str) -> Any:
    """A worker process of ``nats_worker`` in ``role``."""
    return start_worker(HERE, "nats_worker", role, URL, stream, database, *options)


async def _records(stream: str) -> list[int]:
    """The ids of the records stored in ``stream``, in order, repeats included."""
    client = await nats.connect(URL)
    try:
        js = client.jetstream()
        state = (await js.stream_info(stream)).state
        ids: list[int] = []
        for seq in range(state.first_seq, state.last_seq + 1) if state.messages else ():
            message = await js.get_msg(stream, seq)
            assert message.data is not None
            ids.append(json.loads(message.data)["id"])
        return ids
    finally:
        await client.close()


def test_a_relay_killed_between_publish_and_delete_loses_nothing(
    tmp_path: Path, streams: Callable[[], str]
) -> None:
    total = 40
    stream, database = streams(), f"sqlite:///{tmp_path / 'effects.db'}"
    messaging = _application(stream, database)
    outbox = messaging.channel("outbox")
    bus = messaging.gateway(nats_worker.OutboxWorkBus)
    try:
        with messaging.transaction():
            for number in range(total):
                bus.send(nats_worker.Record(number))

        marker = tmp_path / "acknowledged"
        relay = _start_worker("relay", stream, database, "--block-at", "1", "--marker", str(marker))
        kill_when(marker, relay)

        # JetStream acknowledged the whole batch; the outbox never deleted it.
        assert run_async(_records(stream)) == list(range(total))
        assert outbox.depth() == total

        assert messaging.run("outbox").handled == total
        assert outbox.depth() == 0
        assert run_async(_records(stream)) == [*range(total), *range(total)]  # the inbox absorbs it

        assert messaging.run("work").failed == 0

        assert _effects(database) == list(range(total))  # each once: the id is unique
        assert messaging.dead_letters.list() == []
        assert depth_settles_at(messaging.channel("work"), 0)
        _wait_for(lambda: run_async(_stored(stream)) == 0, "the acks to empty the stream")
    finally:
        messaging.close()


def test_a_consumer_killed_mid_handler_loses_nothing_and_repeats_nothing(
    tmp_path: Path, streams: Callable[[], str]
) -> None:
    total, block_at = 6, 3
    stream, database = streams(), f"sqlite:///{tmp_path / 'effects.db'}"
    messaging = _application(stream, database)
    bus = messaging.gateway(nats_worker.WorkBus)
    for number in range(total):
        bus.send(nats_worker.Record(number))

    marker = tmp_path / "marker"
    worker = _start_worker(
        "consume", stream, database, "--block-at", str(block_at), "--marker", str(marker)
    )
    in_hand = int(kill_when(marker, worker))
    assert _effects(database) == list(range(block_at - 1))  # the one in hand did not commit

    deadline = time.monotonic() + 30
    while _effects(database) != list(range(total)) and time.monotonic() < deadline:
        # The messages the dead worker held come back once its ack_wait (1 s) is over.
        messaging.run("work", until_empty=False, limit=1, time_limit=2)
    try:
        assert _effects(database) == list(range(total))  # each once: the id is unique
        assert in_hand in _effects(database)
        assert messaging.dead_letters.list() == []
        assert depth_settles_at(messaging.channel("work"), 0)
    finally:
        messaging.close()


MAX_CRASHES = 2
GOOD, POISON = 10, 4


def _restart_until_drained(stream: str, database: str, *options: str) -> int:
    """Start a worker, again each time one dies; how many died. Fails past the bound."""
    return deaths_until_drained(
        lambda _: _start_worker(
            "drain",
            stream,
            database,
            "--batch-size",
            "4",
            "--poison",
            str(POISON),
            "--max-crashes",
            str(MAX_CRASHES),
            *options,
        ),
        MAX_CRASHES,
    )


@pytest.mark.parametrize("front_door", ["run", "arun"])
def test_a_message_that_kills_its_worker_is_dead_lettered_after_max_crashes(
    tmp_path: Path, streams: Callable[[], str], front_door: str
) -> None:
    stream, database = streams(), f"sqlite:///{tmp_path / 'effects.db'}"
    messaging = _application(stream, database)
    try:
        bus = messaging.gateway(nats_worker.WorkBus)
        for number in range(GOOD + 1):
            bus.send(nats_worker.Record(number))

        deaths = _restart_until_drained(stream, database, *(["--asyncio"] * (front_door == "arun")))

        assert deaths == MAX_CRASHES
        good = [number for number in range(GOOD + 1) if number != POISON]
        assert _effects(database) == good  # each once: the id is unique
        assert depth_settles_at(messaging.channel("work"), 0)
        letters = messaging.dead_letters.list()
        assert [letter.body for letter in letters] == [b'{"id":%d}' % POISON]
        assert letters[0].error_type == "busway.errors.WorkerDiedError"
        assert f"the worker died {MAX_CRASHES} times handling it" in letters[0].error_message
    finally:
        messaging.close()


def test_a_delayed_message_given_back_until_due_counts_no_death(channel: NatsChannel) -> None:
    channel.send(envelope(1, **{DELIVER_AT: time.time() + 0.5}))
    assert take(channel, 1) == []  # fetched too early: given back with a nak until due
    deadline = time.monotonic() + 10
    while not (deliveries := take(channel, 1, wait=0.2)) and time.monotonic() < deadline:
        pass
    assert [(delivery.redelivered, delivery.crashes) for delivery in deliveries] == [(True, 0)]


def _server_pid() -> int | None:
    found = subprocess.run(["pgrep", "-x", "nats-server"], capture_output=True, text=True)
    pids = found.stdout.split()
    return int(pids[0]) if pids else None


def _kill_server() -> None:
    pid = _server_pid()
    if pid is not None:
        os.kill(pid, signal.SIGKILL)  # no goodbye: JetStream's files are all it keeps
    _wait_for(lambda: _server_pid() is None and not _port_answers(), "nats-server to die")


def _start_server() -> None:
    subprocess.run(SERVER_START, check=True)
    _wait_for(_port_answers, "nats-server to listen again")


class _Thread(threading.Thread):
    """A thread whose error is raised again by ``finish``."""

    def __init__(self, target: Callable[[], object]) -> None:
        super().__init__(target=self._run_target, args=(target,))
        self.error: BaseException | None = None

    def _run_target(self, target: Callable[[], object]) -> None:
        try:
            target()
        except BaseException as error:
            self.error = error

    def finish(self, timeout: float = 40) -> None:
        self.join(timeout)
        assert not self.is_alive(), "the thread did not finish"
        if self.error is not None:
            raise self.error


def test_a_server_restarted_mid_run_loses_nothing(
    tmp_path: Path, streams: Callable[[], str], nats_in_use: IO[str]
) -> None:
    fcntl.flock(nats_in_use, fcntl.LOCK_EX)  # once no other test run is using NATS
    total = 60
    stream, database = streams(), f"sqlite:///{tmp_path / 'effects.db'}"
    messaging = nats_worker.build(URL, stream, database, ack_wait=2.0)
    messaging.setup()
    with messaging.database_engine.begin() as connection:
        nats_worker.metadata.create_all(connection)
    bus = messaging.gateway(nats_worker.WorkBus)
    worker = messaging.worker("work", until_empty=False, poll_interval=0.2)
    consuming = _Thread(worker.run)
    sending_started = threading.Event()

    def send_second_half() -> None:
        sending_started.set()
        for number in range(total // 2, total):
            bus.send(nats_worker.Record(number))  # the first ones wait for the server

    sending = _Thread(send_second_half)
    consuming.start()
    try:
        for number in range(total // 2):
            bus.send(nats_worker.Record(number))
        _wait_for(lambda: len(_effects(database)) > 5, "the worker to be under way")
        try:
            _kill_server()
            sending.start()
            sending_started.wait(10)
            assert sending.is_alive(), "a send finished while the server was down"
        finally:
            _start_server()
        sending.finish()
        _wait_for(lambda: len(_effects(database)) == total, "every message", timeout=40)
    finally:
        worker.stop()
        if not _port_answers():
            _start_server()
    consuming.finish()
    try:
        # Acks the killed server had not written down come back after ack_wait: drain them.
        channel = messaging.channel("work")
        deadline = time.monotonic() + 20
        while channel.depth() and time.monotonic() < deadline:
            messaging.run("work", until_empty=False, limit=1, time_limit=1)
        assert depth_settles_at(channel, 0)
        assert _effects(database) == list(range(total))  # the inbox absorbed any repeat
        assert messaging.dead_letters.list() == []
    finally:
        messaging.close()
