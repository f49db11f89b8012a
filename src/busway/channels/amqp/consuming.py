"""Consuming from the queue over a link: fetched messages handed out, acknowledged or given
back, and early ones sent on to a wait queue.

With partitions, the link consumes its share of the partition queues (``shares``) on an AMQP
channel of its own, and hands a partition's next message out only once the one before is
acknowledged or given back.
It gives messages back to RabbitMQ only by closing that channel, once no message of it is in
hand: closing puts every message fetched on it back at its place in one step, before
RabbitMQ makes another consumer active, deliveries still on their way included. A
``basic.cancel`` would let the next consumer have the messages behind them first, and a
``basic.nack`` would let those on their way overtake the one given back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, replace
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
    lane: int = 0
    """Which of the channel's queues it came from (its partition)."""


@dataclass(frozen=True, slots=True)
class _Consumer:
    """The link's subscription: one consumer tag per queue it consumes (``lanes``, indexes
    of the channel's queues), on one AMQP channel."""

    channel: aiormq.Channel
    prefix: str
    lanes: tuple[int, ...]
    tags: tuple[str, ...]

    def active(self) -> bool:
        consumers = self.channel.consumers
        return not self.channel.is_closed and all(tag in consumers for tag in self.tags)


class _ConsumingLink(_Link):
    """A link that consumes from the queue as well: the one the channel uses.

    Fetched messages sit in ``_buffer`` (guarded by ``_lock``) until handed out; with
    partitions, ``_in_hand`` maps each partition whose message is being handled to the AMQP
    channel it came on, and ``_retired`` holds the channels to close once none is in hand.
    """

    def __init__(self, owner: AmqpChannel) -> None:
        super().__init__(owner)
        self._ordered = owner.topology.ordered
        self._in_hand: dict[int, aiormq.Channel] = {}
        self._retired: set[aiormq.Channel] = set()
        self._closing: set[aiormq.Channel] = set()
        self._acking_in_turn: asyncio.Lock | None = None
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
        self._acking_in_turn = asyncio.Lock()

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
            if self._calls or self._idle_armed or not self._consuming():
                return
            self._idle_armed = True
        self.call_soon(self._arm_idle)

    def _consuming(self) -> bool:
        """Whether the link has something an idle link gives up. Called holding ``_lock``."""
        return self._consumer is not None

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
            self.spawn(self._idle())

    async def _idle(self) -> None:
        """Nobody consumes: give the fetched messages back."""
        await self.pause()

    def take_now(self) -> _Received | None:
        """The next fetched message if it is due, without I/O: from any thread."""
        with self._lock:
            consumer = self._consumer
            if consumer is not None:
                index = self._next(consumer.channel)
                if index is not None and self._due(self._buffer[index]):
                    return self._hand_out(index)
        return None

    def _next(self, channel: aiormq.Channel) -> int | None:
        """Where in the buffer the next message to hand out is: the first one fetched on
        ``channel`` whose partition has no message in hand. Called holding ``_lock``."""
        for index, received in enumerate(self._buffer):
            if received.channel is channel and received.lane not in self._in_hand:
                return index
        return None

    def _hand_out(self, index: int) -> _Received:
        received = self._buffer[index]
        del self._buffer[index]
        if self._ordered:
            self._in_hand[received.lane] = received.channel
        return received

    def _release(self, received: _Received) -> bool:
        """Let the next message of ``received``'s partition out, and close its channel if
        retired and now idle; whether there was a partition to release. Called holding
        ``_lock``."""
        if not self._ordered:
            return False
        self._in_hand.pop(received.lane, None)
        channel = received.channel
        if channel in self._retired and channel not in self._in_hand.values():
            self._retired.discard(channel)
            self.call_soon(lambda: self.spawn(self._close_channel(channel)))
        return True

    def _wake(self) -> None:
        if self._arrived is not None:
            self._arrived.set()

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
                    await self._await_arrival(channel, deadline - now)
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
            prefix = f"busway-{self.owner.name}-{uuid.uuid4().hex[:12]}"
            if self._ordered:
                channel, lanes = await self._partitions_channel(patience)
                consumer = _Consumer(channel, prefix, (), ())
            else:
                channel, lanes = await self.channel(patience), [0]
                consumer = _Consumer(channel, prefix, (0,), (prefix,))
            with self._lock:
                self._consumer = consumer
            queue = self.owner.topology.queues[0]
            try:
                if self._ordered:
                    await self._consume_lanes(consumer, lanes)
                else:
                    await channel.basic_consume(
                        queue, functools.partial(self._on_message, 0), consumer_tag=prefix
                    )
            except BaseException as error:
                with self._lock:
                    self._consumer = None
                if self._ordered and not channel.is_closed:
                    await channel.close()
                if isinstance(error, ChannelNotFoundEntity):
                    raise BuswayError(
                        f"channel {self.owner.name!r}: RabbitMQ has no queue {queue!r}; "
                        "create it with messaging.setup() or `busway setup`"
                    ) from error
                raise
            return channel

    async def _partitions_channel(self, patience: float) -> tuple[aiormq.Channel, list[int]]:
        """An AMQP channel to consume partitions on, and which: ``_PartitionedLink``'s."""
        raise NotImplementedError("only a partitioned channel's link consumes partitions")

    async def _consume_lanes(self, consumer: _Consumer, lanes: list[int]) -> None:
        """Subscribe ``consumer``'s AMQP channel to the partitions ``lanes`` as well."""
        queues = self.owner.topology.queues
        for lane in lanes:
            tag = f"{consumer.prefix}-{lane}"
            callback = functools.partial(self._on_message, lane)
            await consumer.channel.basic_consume(queues[lane], callback, consumer_tag=tag)
            with self._lock:
                current = self._consumer
                consumer = replace(
                    consumer, lanes=(*consumer.lanes, lane), tags=(*consumer.tags, tag)
                )
                if current is not None and current.channel is consumer.channel:
                    self._consumer = consumer

    async def _on_message(self, lane: int, message: DeliveredMessage) -> None:
        channel = cast(aiormq.Channel, message.channel)
        envelope, unreadable = _read(message)
        received = _Received(
            channel,
            message.delivery_tag or 0,
            envelope,
            envelope.deliver_at,
            bool(message.redelivered),
            unreadable,
            lane,
        )
        with self._lock:
            consumer = self._consumer
            kept = consumer is not None and consumer.channel is channel
            if kept:
                self._buffer.append(received)
        if kept:
            assert self._arrived is not None
            self._arrived.set()
        elif not self._ordered:  # arrived after the consumer was cancelled
            await self._nack(received)
        # With partitions, it came on a channel to be closed, which gives it back in its place.

    def _pop(self, channel: aiormq.Channel) -> _Received | None:
        with self._lock:
            buffer = self._buffer
            while buffer and buffer[0].channel is not channel:
                buffer.popleft()  # fetched on a channel since lost: the broker put it back
            index = self._next(channel)
            return None if index is None else self._hand_out(index)

    async def _await_arrival(self, channel: aiormq.Channel, seconds: float) -> None:
        """Wait until a message can be handed out: one arrived, or its partition is free."""
        arrived = self._arrived
        assert arrived is not None
        with self._lock:
            if self._next(channel) is not None:
                return
            arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(arrived.wait(), seconds)

    async def _on_the_way(self, channel: aiormq.Channel) -> bool:
        """Whether messages are ready in the queue or sent to this consumer but not arrived.

        A delivery the broker sent before answering a passive declare may reach us after
        that answer; it has surely arrived by the answer to a second one on the same channel.
        Fetched messages waiting for their partition's message in hand count as on the way.
        """
        for _ in range(2):
            with self._lock:
                if any(received.channel is channel for received in self._buffer):
                    return True
            with self._lock:
                consumer = self._consumer
            lanes = consumer.lanes if consumer is not None and consumer.channel is channel else ()
            for lane in lanes:
                queue = self.owner.topology.queues[lane]
                if not self._writable(channel):
                    return True  # closed meanwhile: the next try consumes anew
                declared = await channel.queue_declare(queue, passive=True)
                if declared.message_count:
                    return True
        with self._lock:
            return bool(self._buffer)

    async def _postpone(self, received: _Received) -> None:
        """Send an early message on to the wait queue of the time it has left."""
        envelope = received.envelope
        await self.publish([_outgoing(envelope, self.owner.name, self.owner.topology)])
        self.ack_soon(received)

    def ack_soon(self, received: _Received) -> None:
        """Acknowledge ``received`` shortly, with the acknowledgements made meanwhile."""
        with self._lock:
            self._acks.append(received)
            released = self._release(received)
            acking, self._acking = self._acking, True
        if released:
            self.call_soon(self._wake)
        if not acking:
            self.call_soon(lambda: self.spawn(self._send_acks()))

    async def _send_acks(self) -> None:
        """Send the acknowledgements made so far; once it returns, those made before it was
        called are sent, even by another caller meanwhile."""
        assert self._acking_in_turn is not None
        async with self._acking_in_turn:
            with self._lock:
                acks, self._acks = self._acks, []
                self._acking = False
            for received in acks:
                if not self._writable(received.channel):
                    continue  # the broker delivers it again: the inbox absorbs the repeat
                try:
                    await received.channel.basic_ack(received.tag, wait=False)
                except Exception as error:
                    log.debug("channel %r: acknowledgement lost: %s", self.owner.name, error)

    def _writable(self, channel: aiormq.Channel) -> bool:
        """Whether frames may go on ``channel``: not after its ``channel.close``, for RabbitMQ
        closes the whole connection on a frame for a channel it has closed."""
        return not channel.is_closed and channel not in self._closing

    def give_back(self, received: _Received) -> None:
        """Put a message handed out but not handled back at the head: from any thread."""
        with self._lock:
            self._buffer.appendleft(received)
            released = self._release(received)
        if released:
            self.call_soon(self._wake)

    async def reject(self, received: _Received) -> None:
        """Give a message whose handling raised back to the queue, and the fetched ones.

        With partitions, the link stops consuming on the message's AMQP channel and closes
        it once the other messages in hand from it are acknowledged: RabbitMQ then puts the
        message back before those fetched behind it, even those still on their way.
        """
        if not self._ordered:
            await self._nack(received)
            await self.pause()
            return
        with self._lock:
            consumer = self._consumer
            if consumer is not None and consumer.channel is received.channel:
                self._consumer = None
            self._retired.add(received.channel)
            self._release(received)
        self._wake()

    async def _nack(self, received: _Received) -> None:
        if not self._writable(received.channel):
            return
        try:
            await received.channel.basic_nack(received.tag, requeue=True, wait=False)
        except Exception as error:
            log.debug("channel %r: negative acknowledgement lost: %s", self.owner.name, error)

    async def pause(self) -> None:
        """Stop consuming, and give every fetched message not handed out back to the queue.

        RabbitMQ puts messages given back at their former place, so the order holds.
        """
        if self._ordered:
            await self._close_partitions()
            return
        with self._lock:
            consumer, self._consumer = self._consumer, None
        await self._send_acks()
        if consumer is not None and consumer.active():
            try:
                for tag in consumer.tags:
                    await consumer.channel.basic_cancel(tag)
            except Exception as error:
                log.debug("channel %r: cancelling the consumer: %s", self.owner.name, error)
        with self._lock:
            fetched = list(self._buffer)
            self._buffer.clear()
        for received in fetched:
            await self._nack(received)

    async def _close_partitions(self) -> None:
        """Stop consuming the partitions, unless a message is in hand (the idle check stops
        it once the handlers are done): close the AMQP channel they are consumed on."""
        with self._lock:
            if self._in_hand:
                return
            consumer, self._consumer = self._consumer, None
            self._buffer.clear()
        if consumer is not None:
            await self._close_channel(consumer.channel)

    async def _close_channel(self, channel: aiormq.Channel) -> None:
        """Close a channel the partitions were consumed on, after sending its
        acknowledgements: RabbitMQ puts every other message fetched on it back."""
        await self._send_acks()
        if not self._writable(channel):
            return
        self._closing.add(channel)
        try:
            await channel.close()
        except Exception as error:
            log.debug("channel %r: closing the consumers: %s", self.owner.name, error)
        finally:
            self._closing.discard(channel)
