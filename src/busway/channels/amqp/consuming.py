"""Consuming from the queue over a link: fetched messages handed out, acknowledged or given
back, and early ones sent on to a wait queue."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import aiormq
from aiormq.abc import DeliveredMessage
from aiormq.exceptions import ChannelNotFoundEntity

from busway.channels.amqp.link import _RETRY_PAUSE, _Link, _transient
from busway.channels.amqp.wire import _outgoing, _read
from busway.channels.base import Envelope, Unreadable
from busway.errors import BuswayError

if TYPE_CHECKING:
    from busway.channels.amqp.channel import AmqpChannel

log = logging.getLogger("busway.amqp")

_IDLE = 2.0
"""Seconds without a consume call after which fetched messages go back to the queue."""
_SETTLE = 1.0
"""How long a consume that may not wait still waits for messages the broker is sending."""


@dataclass(slots=True)
class _Received:
    """A message fetched by a consumer and not acknowledged yet."""

    channel: aiormq.Channel
    tag: int
    envelope: Envelope
    deliver_at: float | None
    redelivered: bool
    unreadable: Unreadable | None = None


@dataclass(frozen=True, slots=True)
class _Consumer:
    channel: aiormq.Channel
    tag: str

    def active(self) -> bool:
        return not self.channel.is_closed and self.tag in self.channel.consumers


class _ConsumingLink(_Link):
    """A link that consumes from the queue as well: the one the channel uses.

    Fetched messages sit in ``_buffer`` (guarded by ``_lock``) until handed out.
    """

    def __init__(self, owner: AmqpChannel) -> None:
        super().__init__(owner)
        self._subscribing: asyncio.Lock | None = None
        self._buffer: deque[_Received] = deque()
        self._arrived: asyncio.Event | None = None
        self._consumer: _Consumer | None = None
        self._acks: list[_Received] = []
        self._acking = False
        self._calls = 0
        self._last_call = 0.0
        self._idle_armed = False

    def _on_loop(self) -> None:
        self._arrived = asyncio.Event()
        self._subscribing = asyncio.Lock()

    async def close(self) -> None:
        """Stop consuming, giving the fetched messages back, then close the connection."""
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self.pause()
        await super().close()

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
        envelope, unreadable = _read(message)
        received = _Received(
            channel,
            message.delivery_tag or 0,
            envelope,
            envelope.deliver_at,
            bool(message.redelivered),
            unreadable,
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
