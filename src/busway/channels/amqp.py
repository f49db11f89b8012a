"""``AmqpChannel``: messages in a RabbitMQ queue, through aio-pika.

``setup`` declares a durable queue. Messages are persistent and published with confirms; a
consumer acknowledges a message once its handling returned, and gives it back (``basic.nack``
with requeue) when that raised. Headers travel as AMQP headers, typed; the body as the body.

Delays need no plugin: a delayed message waits in a queue ``<queue>.wait.<ms>`` whose every
message lives ``ms`` milliseconds (a power of two) and then dead-letters back into the queue.
One time to live per wait queue means none blocks another at its head; a message that comes
back still early goes on to the next shorter wait queue, so it arrives a few milliseconds
after its time at most.

The logic is written once, as coroutines of a ``_Link``: one robust connection on one event
loop, which reconnects by itself. The asyncio methods use a link on the caller's loop; the
sync ones use one link on busway's helper loop, and consume without a round trip to it while
fetched messages are at hand. Inside a batch (a relay forwarding an outbox), a send does not
wait for its confirm: the batch waits for all of them before it acknowledges, and fails, so
that it is redone, if one was refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import struct
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, cast
from weakref import WeakKeyDictionary

from busway._internal.bridge import run_coroutine
from busway.channels.base import (
    AsyncHandle,
    Batch,
    Channel,
    ChannelContext,
    Delivery,
    Envelope,
    Handle,
    MessageReturned,
    current_batch,
)
from busway.errors import BuswayError, ConversionError, MissingExtraError
from busway.message import CONTENT_TYPE, CORRELATION_ID, ID, HeaderValue

try:
    import aio_pika
    import aiormq
    from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
    from aiormq.abc import DeliveredMessage
    from aiormq.exceptions import ChannelNotFoundEntity, DeliveryError, PublishError
    from pamqp import commands, encode
    from yarl import URL
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise MissingExtraError("the RabbitMQ channel (busway.amqp)", "rabbitmq") from error

__all__ = ["AmqpChannel"]

log = logging.getLogger("busway.amqp")

DEFAULT_URL = "amqp://guest:guest@127.0.0.1/"

_IDLE = 2.0
"""Seconds without a consume call after which fetched messages go back to the queue."""
_SETTLE = 1.0
"""How long a consume that may not wait still waits for messages the broker is sending."""
_RETRY_PAUSE = 0.05
_LONGEST_WAIT_MS = 1 << 31
_BROKER_HEADERS = ("x-death", "x-first-death-", "x-last-death-", "x-delivery-count")
_LENGTH = struct.Struct(">I")
_DOUBLE = struct.Struct(">d")


# -- wire format ----------------------------------------------------------------------------


class _Properties(commands.Basic.Properties):
    """Properties marshalled once, where the message is made (the sender's thread)."""

    def __init__(self, headers: Mapping[str, HeaderValue]) -> None:
        content_type = _short(headers.get(CONTENT_TYPE))
        message_id = _short(headers.get(ID))
        correlation_id = _short(headers.get(CORRELATION_ID))
        super().__init__(
            content_type=content_type,
            delivery_mode=2,
            correlation_id=correlation_id,
            message_id=message_id,
        )
        # pamqp takes 16 µs here and writes floats with 32 bits; this, 5 µs and 64 bits.
        flags = _HEADERS | _DELIVERY_MODE
        parts = [b"", _field_table(headers), _PERSISTENT]
        if content_type:
            flags |= _CONTENT_TYPE
            parts.insert(1, _short_string(content_type))
        if correlation_id:
            flags |= _CORRELATION_ID
            parts.append(_short_string(correlation_id))
        if message_id:
            flags |= _MESSAGE_ID
            parts.append(_short_string(message_id))
        parts[0] = _FLAGS.pack(flags)
        self._wire = b"".join(parts)

    def marshal(self) -> bytes:
        return self._wire


_FLAGS = struct.Struct(">H")
_CONTENT_TYPE, _HEADERS, _DELIVERY_MODE, _CORRELATION_ID, _MESSAGE_ID = (
    commands.Basic.Properties.flags[name]
    for name in ("content_type", "headers", "delivery_mode", "correlation_id", "message_id")
)
_PERSISTENT = b"\x02"


@functools.lru_cache(maxsize=1024)
def _key(name: str) -> bytes:
    return _short_string(name)


def _short_string(value: str) -> bytes:
    data = value.encode()
    if len(data) > 255:
        raise ValueError(f"{value[:20]!r}... is longer than 255 bytes")
    return bytes((len(data),)) + data


def _field_table(headers: Mapping[str, HeaderValue]) -> bytes:
    """An AMQP field table, floats as 64-bit doubles (pamqp would write 32-bit floats)."""
    parts: list[bytes] = []
    for key, value in headers.items():
        parts.append(_key(key))
        if value.__class__ is str:
            data = value.encode()
            parts.append(b"S" + _LENGTH.pack(len(data)) + data)
        elif value.__class__ is float:
            parts.append(b"d" + _DOUBLE.pack(value))
        elif value is None or isinstance(value, int):
            parts.append(encode.encode_table_value(value))
        else:
            raise TypeError(f"header {key!r} is a {type(value).__name__}")
    data = b"".join(parts)
    return _LENGTH.pack(len(data)) + data


def _short(value: HeaderValue) -> str | None:
    """``value`` as an AMQP short string property, if it can be one."""
    if isinstance(value, str) and len(value.encode()) <= 255:
        return value
    return None


@dataclass(slots=True)
class _Outgoing:
    body: bytes
    properties: _Properties
    deliver_at: float | None


def _outgoing(envelope: Envelope, channel: str) -> _Outgoing:
    try:
        properties = _Properties(envelope.headers)
    except (TypeError, ValueError, struct.error) as error:
        raise ConversionError(
            f"a header of a message for channel {channel!r} cannot be an AMQP header: {error}; "
            "header values must be str, int, float, bool or None"
        ) from error
    return _Outgoing(envelope.body, properties, envelope.deliver_at)


def _header_value(value: Any) -> HeaderValue:
    if value is None or isinstance(value, str | int | float):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, Decimal):
        return float(value)
    return str(value)


def _envelope(message: DeliveredMessage) -> Envelope:
    raw = message.header.properties.headers or {}
    headers = {
        key: _header_value(value)
        for key, value in raw.items()
        if not key.startswith(_BROKER_HEADERS)  # added by RabbitMQ on the message's way
    }
    return Envelope(message.body, headers)


@dataclass(slots=True)
class _Received:
    """A message fetched by a consumer and not acknowledged yet."""

    channel: aiormq.Channel
    tag: int
    envelope: Envelope
    deliver_at: float | None
    redelivered: bool


@dataclass(frozen=True, slots=True)
class _Consumer:
    channel: aiormq.Channel
    tag: str

    def active(self) -> bool:
        return not self.channel.is_closed and self.tag in self.channel.consumers


def _wait_ms(remaining: float) -> int:
    """The longest wait queue that does not overshoot ``remaining`` seconds (at least 1 ms)."""
    milliseconds = int(remaining * 1000)
    return min(_LONGEST_WAIT_MS, 1 << max(0, milliseconds.bit_length() - 1))


class _Unreachable(BuswayError, ConnectionError):
    """The broker could not be reached in time."""


def _transient(error: BaseException) -> bool:
    """Whether ``error`` comes from a lost connection, which the robust connection restores."""
    if isinstance(error, BuswayError):
        return isinstance(error, _Unreachable)
    return isinstance(error, aiormq.exceptions.AMQPError | ConnectionError | OSError | RuntimeError)


# -- one connection on one event loop -------------------------------------------------------


class _Link:
    """A robust connection to RabbitMQ on one event loop, and all the channel does over it.

    Coroutines run on ``loop``; the methods that are not coroutines may be called from any
    thread. Fetched messages sit in ``_buffer`` (guarded by ``_lock``) until handed out.
    """

    def __init__(self, owner: AmqpChannel) -> None:
        self.owner = owner
        self.queue = owner.queue
        self.loop: asyncio.AbstractEventLoop | None = None
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._underlay: aiormq.Channel | None = None
        self._opening: asyncio.Lock | None = None
        self._subscribing: asyncio.Lock | None = None
        self._wait_queues: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lock = threading.Lock()
        self._batches: WeakKeyDictionary[Batch, _Confirms] = WeakKeyDictionary()
        self._buffer: deque[_Received] = deque()
        self._arrived: asyncio.Event | None = None
        self._consumer: _Consumer | None = None
        self._acks: list[_Received] = []
        self._acking = False
        self._calls = 0
        self._last_call = 0.0
        self._idle_armed = False

    # -- connection ----------------------------------------------------------------------

    async def open(self) -> None:
        if self._channel is not None:
            return
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._channel is not None:
                return
            self.loop = asyncio.get_running_loop()
            self._arrived = asyncio.Event()
            self._subscribing = asyncio.Lock()
            owner = self.owner
            connection = aio_pika.RobustConnection(
                URL(owner.url),
                reconnect_interval=owner.reconnect_interval,
                client_properties={"connection_name": f"busway {owner.name}"},
            )
            try:
                await connection.connect(timeout=owner.publish_timeout)
            except Exception as error:
                await connection.close()
                raise _Unreachable(
                    f"channel {owner.name!r} cannot connect to RabbitMQ at {owner.safe_url}: "
                    f"{error}; check that the broker runs and that the URL and credentials "
                    "are right"
                ) from error
            try:
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                await channel.set_qos(prefetch_count=owner.prefetch)
            except BaseException:
                await connection.close()
                raise
            self._connection, self._channel = connection, channel

    async def channel(self, patience: float) -> aiormq.Channel:
        """The open AMQP channel, waiting up to ``patience`` seconds for a reconnection."""
        underlay = self._underlay
        if underlay is not None and not underlay.is_closed:
            return underlay
        await self.open()
        assert self._channel is not None
        try:
            await asyncio.wait_for(self._channel.ready(), max(patience, 0.01))
            underlay = cast(aiormq.Channel, await self._channel.get_underlay_channel())
        except (TimeoutError, aiormq.exceptions.ChannelInvalidStateError) as error:
            raise _Unreachable(
                f"channel {self.owner.name!r}: RabbitMQ at {self.owner.safe_url} is not "
                f"reachable after {patience:.0f}s"
            ) from error
        self._underlay = underlay
        return underlay

    async def close(self) -> None:
        if self._connection is None:
            return
        with contextlib.suppress(Exception):
            await self.pause()
        connection, self._connection, self._channel = self._connection, None, None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await connection.close()

    def call_soon(self, callback: Callable[[], Any]) -> None:
        """Run ``callback`` on the link's loop, from any thread."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(callback)

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("channel %r: %s", self.owner.name, task.exception())

    # -- setup and inspection ------------------------------------------------------------

    async def declare(self) -> None:
        channel = await self.channel(self.owner.publish_timeout)
        try:
            await channel.queue_declare(
                self.queue, durable=True, arguments=dict(self.owner.queue_arguments)
            )
        except aiormq.exceptions.ChannelPreconditionFailed as error:
            raise BuswayError(
                f"channel {self.owner.name!r}: RabbitMQ has a queue {self.queue!r} declared "
                f"otherwise ({error}); delete it or give the channel another queue="
            ) from error

    async def depth(self) -> int | None:
        channel = await self.channel(self.owner.publish_timeout)
        probe = await channel.connection.channel(publisher_confirms=False)
        try:
            declared = await probe.queue_declare(self.queue, passive=True)
        except ChannelNotFoundEntity:
            return None
        finally:
            if not probe.is_closed:
                await probe.close()
        return declared.message_count

    # -- publishing ----------------------------------------------------------------------

    async def publish(self, outgoing: Sequence[_Outgoing]) -> None:
        """Publish and wait for the confirms; raise the first failure."""
        if len(outgoing) == 1:  # the common case, without a task of its own
            deadline = asyncio.get_running_loop().time() + self.owner.publish_timeout
            try:
                return await self.publish_once(outgoing[0], deadline)
            except Exception as failure:
                if not _transient(failure):
                    raise
        failures = await self.publish_all(outgoing)
        if failures:
            raise failures[0][1]

    async def publish_all(
        self,
        outgoing: Sequence[_Outgoing],
        deadline: float | None = None,
        results: Sequence[BaseException | None] | None = None,
    ) -> list[tuple[_Outgoing, BaseException]]:
        """Publish and wait for the confirms, publishing again what a lost connection took
        until ``deadline``; the messages refused or never confirmed, each with its error.

        ``results`` are those of a first attempt already made, one per message.
        """
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self.owner.publish_timeout
        failures: list[tuple[_Outgoing, BaseException]] = []
        pending = list(outgoing)
        while pending:
            if results is None:
                results = await asyncio.gather(
                    *(self.publish_once(message, deadline) for message in pending),
                    return_exceptions=True,
                )
            again: list[_Outgoing] = []
            lost: BaseException | None = None
            for message, result in zip(pending, results, strict=True):
                if result is None:
                    continue
                if _transient(result) or isinstance(result, asyncio.CancelledError):
                    again.append(message)
                    lost = result
                else:
                    failures.append((message, result))
            task = asyncio.current_task()
            if again and task is not None and task.cancelling():
                raise asyncio.CancelledError
            pending, results = again, None
            if pending and loop.time() >= deadline:
                error = BuswayError(
                    f"channel {self.owner.name!r}: {len(pending)} message(s) not confirmed by "
                    f"RabbitMQ within {self.owner.publish_timeout:.0f}s: {lost}"
                )
                error.__cause__ = lost
                failures += [(message, error) for message in pending]
                break
            if pending:
                await asyncio.sleep(_RETRY_PAUSE)
        return failures

    async def publish_once(self, message: _Outgoing, deadline: float) -> None:
        channel = self._underlay
        if channel is None or channel.is_closed:
            channel = await self.channel(deadline - asyncio.get_running_loop().time())
        routing_key = self.queue
        if message.deliver_at is not None:
            routing_key = await self._route(channel, message.deliver_at)
        try:
            await channel.basic_publish(
                message.body,
                routing_key=routing_key,
                properties=message.properties,
                mandatory=True,
                wait=False,  # the confirm is awaited: no need to wait for the write as well
            )
        except PublishError as error:
            if routing_key != self.queue:
                self._wait_queues.discard(routing_key)  # deleted since: declare it again
                raise ConnectionError(f"wait queue {routing_key!r} is gone") from error
            raise BuswayError(
                f"channel {self.owner.name!r}: RabbitMQ has no queue {self.queue!r}; create it "
                "with messaging.setup() or `busway setup`"
            ) from error
        except DeliveryError as error:
            raise BuswayError(
                f"channel {self.owner.name!r}: RabbitMQ refused a message for queue "
                f"{self.queue!r} ({error}); see the broker's log"
            ) from error

    async def _route(self, channel: aiormq.Channel, deliver_at: float) -> str:
        """The queue to publish to: this one, or the wait queue of the time left."""
        remaining = deliver_at - self.owner.clock()
        if remaining <= 0:
            return self.queue
        milliseconds = _wait_ms(remaining)
        name = f"{self.queue}.wait.{milliseconds}"
        if name not in self._wait_queues:
            await channel.queue_declare(
                name,
                durable=True,
                arguments={
                    "x-message-ttl": milliseconds,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": self.queue,
                },
            )
            self._wait_queues.add(name)
        return name

    def confirms(self, batch: Batch) -> _Confirms:
        """The publishes of ``batch`` on this link, settled before the batch acknowledges."""
        with self._lock:
            confirms = self._batches.get(batch)
            if confirms is None:
                confirms = self._batches[batch] = _Confirms(self, batch)
                batch.before_ack.append(confirms.settle_callback)
        return confirms

    # -- consuming -----------------------------------------------------------------------

    def begin(self) -> None:
        with self._lock:
            self._calls += 1

    def end(self) -> None:
        with self._lock:
            self._calls -= 1
            self._last_call = time.monotonic()
            if self._calls or self._idle_armed or self._consumer is None:
                return
            self._idle_armed = True
        self.call_soon(self._arm_idle)

    def _arm_idle(self, delay: float = _IDLE) -> None:
        assert self.loop is not None
        self.loop.call_later(delay, self._check_idle)

    def _check_idle(self) -> None:
        with self._lock:
            if self._calls:
                self._idle_armed = False
                return
            left = _IDLE - (time.monotonic() - self._last_call)
            if left <= 0:
                self._idle_armed = False
        if left > 0:
            self._arm_idle(left)
        else:
            self.spawn(self.pause())

    def take_now(self) -> _Received | None:
        """The next fetched message if it is due, without I/O: from any thread."""
        with self._lock:
            consumer = self._consumer
            if self._buffer and consumer is not None:
                received = self._buffer[0]
                if received.channel is consumer.channel and self._due(received):
                    return self._buffer.popleft()
        return None

    def _due(self, received: _Received) -> bool:
        return received.deliver_at is None or received.deliver_at <= self.owner.clock()

    async def take(self, wait: float) -> _Received | None:
        """The next due message, waiting up to ``wait`` seconds for one to arrive.

        While the broker is away, waits for it up to ``wait`` seconds (then there is no
        message), or ``publish_timeout`` when ``wait`` is 0 (then it raises).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        give_up = deadline if wait > 0 else loop.time() + self.owner.publish_timeout
        settle_by: float | None = None
        while True:
            try:
                channel = await self._subscribe(give_up - loop.time())
                received = self._pop(channel)
                if received is not None:
                    if self._due(received):
                        return received
                    await self._postpone(received)
                    continue
                await self._send_acks()  # the broker sends no more than prefetch unacknowledged
                now = loop.time()
                if now < deadline:
                    await self._await_arrival(deadline - now)
                    continue
                # No time left to wait; but a message sent before may still be on its way.
                settle_by = settle_by or now + _SETTLE
                if now >= settle_by or not await self._on_the_way(channel):
                    await self.pause()  # fetch nothing more while nobody asks
                    return None
                deadline = min(settle_by, now + 0.02)
            except Exception as error:
                if not _transient(error):
                    raise
                if loop.time() < give_up:
                    await asyncio.sleep(_RETRY_PAUSE)
                elif wait > 0:
                    return None
                else:
                    raise

    async def _subscribe(self, patience: float) -> aiormq.Channel:
        consumer = self._consumer
        if consumer is not None and consumer.active():
            return consumer.channel
        await self.open()
        assert self._subscribing is not None
        async with self._subscribing:
            consumer = self._consumer
            if consumer is not None and consumer.active():
                return consumer.channel
            channel = await self.channel(patience)
            consumer = _Consumer(channel, f"busway-{self.owner.name}-{uuid.uuid4().hex[:12]}")
            with self._lock:
                self._consumer = consumer
            try:
                await channel.basic_consume(self.queue, self._on_message, consumer_tag=consumer.tag)
            except BaseException as error:
                with self._lock:
                    self._consumer = None
                if isinstance(error, ChannelNotFoundEntity):
                    raise BuswayError(
                        f"channel {self.owner.name!r}: RabbitMQ has no queue {self.queue!r}; "
                        "create it with messaging.setup() or `busway setup`"
                    ) from error
                raise
            return channel

    async def _on_message(self, message: DeliveredMessage) -> None:
        channel = cast(aiormq.Channel, message.channel)
        envelope = _envelope(message)
        received = _Received(
            channel,
            message.delivery_tag or 0,
            envelope,
            envelope.deliver_at,
            bool(message.redelivered),
        )
        with self._lock:
            consumer = self._consumer
            kept = consumer is not None and consumer.channel is channel
            if kept:
                self._buffer.append(received)
        if kept:
            assert self._arrived is not None
            self._arrived.set()
        else:  # arrived after the consumer was cancelled
            await self._nack(received)

    def _pop(self, channel: aiormq.Channel) -> _Received | None:
        with self._lock:
            while self._buffer:
                received = self._buffer.popleft()
                if received.channel is channel:
                    return received
                # Fetched on a channel since lost: the broker has put it back already.
        return None

    async def _await_arrival(self, seconds: float) -> None:
        arrived = self._arrived
        assert arrived is not None
        with self._lock:
            if self._buffer:
                return
            arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(arrived.wait(), seconds)

    async def _on_the_way(self, channel: aiormq.Channel) -> bool:
        """Whether messages are ready in the queue or sent to this consumer but not arrived.

        A delivery the broker sent before answering a passive declare may reach us after
        that answer; it has surely arrived by the answer to a second one on the same channel.
        """
        for _ in range(2):
            declared = await channel.queue_declare(self.queue, passive=True)
            if declared.message_count:
                return True
        with self._lock:
            return bool(self._buffer)

    async def _postpone(self, received: _Received) -> None:
        """Send an early message on to the wait queue of the time it has left."""
        envelope = received.envelope
        await self.publish([_outgoing(envelope, self.owner.name)])
        self.ack_soon(received)

    def ack_soon(self, received: _Received) -> None:
        """Acknowledge ``received`` shortly, with the acknowledgements made meanwhile."""
        with self._lock:
            self._acks.append(received)
            if self._acking:
                return
            self._acking = True
        self.call_soon(lambda: self.spawn(self._send_acks()))

    async def _send_acks(self) -> None:
        with self._lock:
            acks, self._acks = self._acks, []
            self._acking = False
        for received in acks:
            if received.channel.is_closed:
                continue  # the broker delivers it again: the inbox absorbs the repeat
            try:
                await received.channel.basic_ack(received.tag, wait=False)
            except Exception as error:
                log.debug("channel %r: acknowledgement lost: %s", self.owner.name, error)

    def give_back(self, received: _Received) -> None:
        """Put a message handed out but not handled back at the head: from any thread."""
        with self._lock:
            self._buffer.appendleft(received)

    async def reject(self, received: _Received) -> None:
        """Give a message whose handling raised back to the queue, and the fetched ones."""
        await self._nack(received)
        await self.pause()

    async def _nack(self, received: _Received) -> None:
        if received.channel.is_closed:
            return
        try:
            await received.channel.basic_nack(received.tag, requeue=True, wait=False)
        except Exception as error:
            log.debug("channel %r: negative acknowledgement lost: %s", self.owner.name, error)

    async def pause(self) -> None:
        """Stop consuming, and give every fetched message not handed out back to the queue.

        RabbitMQ puts messages given back at their former place, so the order holds.
        """
        with self._lock:
            consumer, self._consumer = self._consumer, None
        await self._send_acks()
        if consumer is not None and consumer.active():
            try:
                await consumer.channel.basic_cancel(consumer.tag)
            except Exception as error:
                log.debug("channel %r: cancelling the consumer: %s", self.owner.name, error)
        with self._lock:
            fetched = list(self._buffer)
            self._buffer.clear()
        for received in fetched:
            await self._nack(received)


class _Confirms:
    """One batch's publishes on one link, their confirms in flight until ``settle``."""

    def __init__(self, link: _Link, batch: Batch) -> None:
        self.link = link
        self._batch = weakref.ref(batch)  # the link's map of batches holds them weakly
        self._lock = threading.Lock()
        self._queued: list[tuple[_Outgoing, str | None]] = []
        self._scheduled = False
        self._in_flight: list[tuple[_Outgoing, str | None, asyncio.Task[None]]] = []
        self._deadline: float | None = None

    @property
    def batch(self) -> Batch:
        batch = self._batch()
        assert batch is not None, "a batch outlives its before_ack callbacks"
        return batch

    def add(self, message: _Outgoing) -> None:
        """Start publishing ``message`` without waiting for its confirm: from any thread.

        The message is tagged with the batch's message in hand, to keep back only that one
        if it is not confirmed.
        """
        with self._lock:
            self._queued.append((message, self.batch.current))
            if self._scheduled:
                return
            self._scheduled = True
        self.link.call_soon(self._start)

    def _start(self) -> None:
        with self._lock:
            queued, self._queued = self._queued, []
            self._scheduled = False
        if not queued:
            return
        loop = asyncio.get_running_loop()
        self._deadline = deadline = loop.time() + self.link.owner.publish_timeout
        for message, source in queued:
            task = loop.create_task(self.link.publish_once(message, deadline))
            self._in_flight.append((message, source, task))

    async def settle(self) -> None:
        """Wait for every confirm and publish again what a lost connection took; raise
        ``Unsent`` (or the error) for the messages refused or never confirmed."""
        self._start()
        in_flight, self._in_flight = self._in_flight, []
        results = await asyncio.gather(*(task for *_, task in in_flight), return_exceptions=True)
        sources = {id(message): source for message, source, _ in in_flight}
        failures = await self.link.publish_all(
            [message for message, *_ in in_flight], self._deadline, results
        )
        if failures:
            raise self.batch.unsent([(sources[id(message)], error) for message, error in failures])

    def settle_callback(self) -> Awaitable[None] | None:
        """The batch's ``before_ack`` callback: waits here in sync code, else returns an
        awaitable for the caller's loop."""
        loop = self.link.loop
        assert loop is not None
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run_coroutine_threadsafe(self.settle(), loop).result()
            return None
        if running is loop:
            return self.settle()
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.settle(), loop))


# -- the channel ----------------------------------------------------------------------------


class AmqpChannel(Channel):
    """A channel on a durable RabbitMQ queue (named like the channel unless ``queue=``).

    ``prefetch`` is how many unacknowledged messages a consumer may hold; a send waits up to
    ``publish_timeout`` seconds for its confirm, across reconnections, which are tried every
    ``reconnect_interval`` seconds. ``queue_arguments`` go to the queue's declaration (for
    instance ``{"x-queue-type": "quorum"}``).
    """

    def __init__(
        self,
        name: str,
        url: str = DEFAULT_URL,
        *,
        queue: str | None = None,
        prefetch: int = 100,
        queue_arguments: Mapping[str, Any] | None = None,
        publish_timeout: float = 30.0,
        reconnect_interval: float = 1.0,
    ) -> None:
        self.name = name
        self.url = url
        self.queue = queue or name
        self.prefetch = prefetch
        self.queue_arguments = dict(queue_arguments or {})
        self.publish_timeout = publish_timeout
        self.reconnect_interval = reconnect_interval
        self.clock: Callable[[], float] = time.time
        self._lock = threading.Lock()
        self._sync: _Link | None = None
        self._links: WeakKeyDictionary[asyncio.AbstractEventLoop, _Link] = WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"AmqpChannel({self.name!r}, queue={self.queue!r})"

    @property
    def safe_url(self) -> str:
        """The URL without its password, for messages."""
        url = URL(self.url)
        return str(url.with_password("***")) if url.password else str(url)

    def attach(self, context: ChannelContext) -> None:
        self.clock = context.clock

    def validate(self) -> list[str]:
        problems = []
        if URL(self.url).scheme not in ("amqp", "amqps"):
            problems.append(
                f"AmqpChannel {self.name!r} has URL {self.safe_url!r}; it must start with "
                "amqp:// or amqps://"
            )
        if self.prefetch < 1:
            problems.append(f"AmqpChannel {self.name!r} needs a prefetch of 1 or more")
        return problems

    # -- the links: one on busway's helper loop for sync code, one per asyncio loop --------

    def _sync_link(self) -> _Link:
        link = self._sync
        if link is None:
            with self._lock:
                link = self._sync
                if link is None:
                    link = _Link(self)
                    run_coroutine(link.open())
                    self._sync = link
        return link

    async def _loop_link(self) -> _Link:
        loop = asyncio.get_running_loop()
        link = self._sync
        if link is None or link.loop is not loop:
            with self._lock:
                link = self._links.get(loop)
                if link is None:
                    link = self._links[loop] = _Link(self)
        if link.loop is None:
            await link.open()
        return link

    # -- sync ------------------------------------------------------------------------------

    def setup(self) -> None:
        run_coroutine(self._sync_link().declare())

    def send(self, envelope: Envelope) -> None:
        message = _outgoing(envelope, self.name)
        link = self._sync_link()
        batch = current_batch.get()
        if batch is None:
            run_coroutine(link.publish([message]))
        else:
            link.confirms(batch).add(message)

    def consume(self, handle: Handle, max_messages: int, wait: float) -> int:
        if max_messages <= 0:
            return 0
        link = self._sync_link()
        handled = 0
        link.begin()
        try:
            received = link.take_now() or run_coroutine(link.take(wait))
            while received is not None:
                try:
                    handle(self._delivery(received))
                except MessageReturned:
                    link.give_back(received)
                    break
                except BaseException:
                    run_coroutine(link.reject(received))
                    raise
                link.ack_soon(received)
                handled += 1
                if handled == max_messages:
                    break
                received = link.take_now() or run_coroutine(link.take(0.0))
        finally:
            link.end()
        return handled

    def depth(self) -> int | None:
        return run_coroutine(self._sync_link().depth())

    def close(self) -> None:
        with self._lock:
            link, self._sync = self._sync, None
        if link is not None:
            run_coroutine(link.close())

    # -- asyncio ---------------------------------------------------------------------------

    async def asetup(self) -> None:
        await (await self._loop_link()).declare()

    async def asend(self, envelope: Envelope) -> None:
        message = _outgoing(envelope, self.name)
        link = await self._loop_link()
        batch = current_batch.get()
        if batch is None:
            await link.publish([message])
        else:
            link.confirms(batch).add(message)

    async def aconsume(self, handle: AsyncHandle, max_messages: int, wait: float) -> int:
        if max_messages <= 0:
            return 0
        link = await self._loop_link()
        handled = 0
        link.begin()
        try:
            received = link.take_now() or await link.take(wait)
            while received is not None:
                try:
                    await handle(self._delivery(received))
                except MessageReturned:
                    link.give_back(received)
                    break
                except BaseException:
                    await link.reject(received)
                    raise
                link.ack_soon(received)
                handled += 1
                if handled == max_messages:
                    break
                received = link.take_now() or await link.take(0.0)
        finally:
            link.end()
        return handled

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            links = [self._links.pop(loop, None)]
            if self._sync is not None and self._sync.loop is loop:
                links.append(self._sync)
                self._sync = None
        for link in links:
            if link is not None:
                await link.close()
        if self._sync is not None:
            await asyncio.to_thread(self.close)

    def _delivery(self, received: _Received) -> Delivery:
        return Delivery(received.envelope, self.name, redelivered=received.redelivered)
