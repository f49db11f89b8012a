"""``AmqpChannel``: the channel, with a link on busway's helper loop for sync code and one per
asyncio loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from weakref import WeakKeyDictionary

from yarl import URL

from busway._internal.bridge import run_coroutine
from busway.channels.amqp.consuming import _ConsumingLink, _Received
from busway.channels.amqp.partitioned import _PartitionedLink
from busway.channels.amqp.topology import _Topology
from busway.channels.amqp.wire import _outgoing
from busway.channels.base import (
    AsyncHandle,
    Channel,
    ChannelContext,
    Delivery,
    Envelope,
    Handle,
    MessageReturned,
    current_batch,
)

__all__ = ["AmqpChannel"]

DEFAULT_URL = "amqp://guest:guest@127.0.0.1/"


class AmqpChannel(Channel):
    """A channel on a durable RabbitMQ queue (named like the channel unless ``queue=``).

    ``prefetch`` is how many unacknowledged messages a consumer may hold; a send waits up to
    ``publish_timeout`` seconds for its confirm, across reconnections, which are tried every
    ``reconnect_interval`` seconds. ``queue_arguments`` go to the queue's declaration (for
    instance ``{"x-queue-type": "quorum"}``).

    ``partitions=N`` keeps ordering keys: the channel has N queues ``QUEUE.0`` to
    ``QUEUE.N-1``, each with a single active consumer across all processes, a key's messages
    all go to one of them, the processes consuming the channel share them out, and a process
    hands each one's messages out one at a time, in order (``prefetch`` then counts per
    partition). ``priorities=True`` declares the queue
    with ``x-max-priority`` and publishes each message with its priority.
    """

    holds_keyed_retries: bool = False
    """Whether a keyed message's delayed retry waits in the worker, keeping its place before
    the later messages of its key: true with partitions, whose order a retry published anew
    would lose."""

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
        partitions: int | None = None,
        priorities: bool = False,
    ) -> None:
        self.name = name
        self.url = url
        self.queue = queue or name
        self.prefetch = prefetch
        self.queue_arguments = dict(queue_arguments or {})
        self.partitions = partitions
        self.priorities = priorities
        self.topology = _Topology(self.queue, partitions, priorities, self.queue_arguments)
        self.holds_keyed_retries = partitions is not None
        self.publish_timeout = publish_timeout
        self.reconnect_interval = reconnect_interval
        self.clock: Callable[[], float] = time.time
        self._lock = threading.Lock()
        self._sync: _ConsumingLink | None = None
        self._links: WeakKeyDictionary[asyncio.AbstractEventLoop, _ConsumingLink] = (
            WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        if self.partitions is None:
            return f"AmqpChannel({self.name!r}, queue={self.queue!r})"
        return f"AmqpChannel({self.name!r}, queue={self.queue!r}, partitions={self.partitions})"

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
        return problems + self.topology.problems(self.name)

    # -- the links: one on busway's helper loop for sync code, one per asyncio loop --------

    def _new_link(self) -> _ConsumingLink:
        return _PartitionedLink(self) if self.topology.ordered else _ConsumingLink(self)

    def _sync_link(self) -> _ConsumingLink:
        link = self._sync
        if link is None:
            with self._lock:
                link = self._sync
                if link is None:
                    link = self._new_link()
                    run_coroutine(link.open())
                    self._sync = link
        return link

    async def _loop_link(self) -> _ConsumingLink:
        loop = asyncio.get_running_loop()
        link = self._sync
        if link is None or link.loop is not loop:
            with self._lock:
                link = self._links.get(loop)
                if link is None:
                    link = self._links[loop] = self._new_link()
        if link.loop is None:
            await link.open()
        return link

    # -- sync ------------------------------------------------------------------------------

    def setup(self) -> None:
        run_coroutine(self._sync_link().declare())

    def send(self, envelope: Envelope) -> None:
        link = self._sync_link()
        batch = current_batch.get()
        if batch is None:
            run_coroutine(link.publish([_outgoing(envelope, self.name, self.topology)]))
        else:
            link.deferred(batch).add(_outgoing(envelope, self.name, self.topology))

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
        link = await self._loop_link()
        batch = current_batch.get()
        if batch is None:
            await link.publish([_outgoing(envelope, self.name, self.topology)])
        else:
            link.deferred(batch).add(_outgoing(envelope, self.name, self.topology))

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
        return Delivery(
            received.envelope,
            self.name,
            redelivered=received.redelivered,
            unreadable=received.unreadable,
        )
