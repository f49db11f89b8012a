"""The connection to RabbitMQ on one event loop, and the setting up and publishing over it."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, cast
from weakref import WeakKeyDictionary

import aio_pika
import aiormq
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from aiormq.exceptions import ChannelNotFoundEntity, DeliveryError, PublishError
from yarl import URL

from busway.channels.amqp.deferred import _Deferred
from busway.channels.amqp.wire import _Outgoing
from busway.channels.base import Batch
from busway.errors import BuswayError, ConfigurationError

if TYPE_CHECKING:
    from busway.channels.amqp.channel import AmqpChannel

log = logging.getLogger("busway.amqp")

_RETRY_PAUSE = 0.05
_LONGEST_WAIT_MS = 1 << 31


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


class _Link:
    """A robust connection to RabbitMQ on one event loop, and the setting up and publishing
    the channel does over it; ``_ConsumingLink`` adds the consuming.

    Coroutines run on ``loop``; the methods that are not coroutines may be called from any
    thread.
    """

    def __init__(self, owner: AmqpChannel) -> None:
        self.owner = owner
        self.loop: asyncio.AbstractEventLoop | None = None
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._underlay: aiormq.Channel | None = None
        self._opening: asyncio.Lock | None = None
        self._wait_queues: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lock = threading.Lock()
        self._batches: WeakKeyDictionary[Batch, _Deferred] = WeakKeyDictionary()

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
            self._on_loop()
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

    def _on_loop(self) -> None:
        """Make the asyncio objects of the link's loop, as the link opens on it."""

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

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("channel %r: %s", self.owner.name, task.exception())

    # -- setup and inspection ------------------------------------------------------------

    async def declare(self) -> None:
        """Declare the channel's queues; one declared before with other arguments (RabbitMQ
        answers ``PRECONDITION_FAILED``) is a configuration error."""
        arguments = self.owner.topology.declared_arguments()
        for queue in self.owner.topology.queues:
            channel = await self.channel(self.owner.publish_timeout)
            try:
                await channel.queue_declare(queue, durable=True, arguments=dict(arguments))
            except aiormq.exceptions.ChannelPreconditionFailed as error:
                raise ConfigurationError(
                    f"channel {self.owner.name!r}: RabbitMQ has a queue {queue!r} declared "
                    f"with other arguments than {arguments} ({error}); RabbitMQ does "
                    "not change a queue's arguments, so delete the queue (after draining it) "
                    "or give the channel a new queue= name"
                ) from error

    async def depth(self) -> int | None:
        """The messages ready in the channel's queues; None if none of them exists."""
        channel = await self.channel(self.owner.publish_timeout)
        total: int | None = None
        for queue in self.owner.topology.queues:
            probe = await channel.connection.channel(publisher_confirms=False)
            try:
                declared = await probe.queue_declare(queue, passive=True)
            except ChannelNotFoundEntity:
                continue
            finally:
                if not probe.is_closed:
                    await probe.close()
            total = (total or 0) + (declared.message_count or 0)
        return total

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
        queue = message.queue
        routing_key = queue
        if message.deliver_at is not None:
            routing_key = await self._route(channel, message.deliver_at, queue)
        try:
            await channel.basic_publish(
                message.body,
                routing_key=routing_key,
                properties=message.properties,
                mandatory=True,
                wait=False,  # the confirm is awaited: no need to wait for the write as well
            )
        except PublishError as error:
            if routing_key != queue:
                self._wait_queues.discard(routing_key)  # deleted since: declare it again
                raise ConnectionError(f"wait queue {routing_key!r} is gone") from error
            raise BuswayError(
                f"channel {self.owner.name!r}: RabbitMQ has no queue {queue!r}; create it "
                "with messaging.setup() or `busway setup`"
            ) from error
        except DeliveryError as error:
            raise BuswayError(
                f"channel {self.owner.name!r}: RabbitMQ refused a message for queue "
                f"{queue!r} ({error}); see the broker's log"
            ) from error

    async def _route(self, channel: aiormq.Channel, deliver_at: float, queue: str) -> str:
        """The queue to publish to: ``queue``, or its wait queue of the time left."""
        remaining = deliver_at - self.owner.clock()
        if remaining <= 0:
            return queue
        milliseconds = _wait_ms(remaining)
        name = f"{queue}.wait.{milliseconds}"
        if name not in self._wait_queues:
            await channel.queue_declare(
                name,
                durable=True,
                arguments={
                    "x-message-ttl": milliseconds,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": queue,
                },
            )
            self._wait_queues.add(name)
        return name

    def deferred(self, batch: Batch) -> _Deferred:
        """The publishes of ``batch`` on this link, settled before the batch acknowledges."""
        with self._lock:
            deferred = self._batches.get(batch)
            if deferred is None:
                deferred = self._batches[batch] = _Deferred(self, batch)
                batch.before_ack.append(deferred.before_ack)
        return deferred
