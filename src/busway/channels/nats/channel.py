"""``NatsChannel``: a JetStream stream with one durable pull consumer, both edges.

The logic lives once, as coroutines; the sync methods run them on busway's helper loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg

from busway._internal.bridge import run_coroutine
from busway.channels.base import (
    AsyncHandle,
    Batch,
    Channel,
    ChannelContext,
    Envelope,
    Handle,
    MessageReturned,
    current_batch,
)
from busway.channels.nats.deferred import Deferred
from busway.channels.nats.hand import Hand, suspect
from busway.channels.nats.link import (
    Link,
    Unavailable,
    close_link,
    connect,
    transient,
    usable,
)
from busway.channels.nats.queued import running_loop
from busway.channels.nats.topology import declare, failure, require_stream
from busway.channels.nats.wire import HEADERS, encode_headers
from busway.errors import ConfigurationError

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_-]")


class NatsChannel(Channel):
    """A JetStream stream with one durable pull consumer shared by every worker.

    ``stream``, ``subject`` and ``durable`` default to names derived from the channel name.
    ``ack_wait`` is how long a message in a worker's hands stays hidden from the others: a
    worker that dies unacknowledged gives it back after that long. ``timeout`` bounds each
    request to the server; ``reconnect_timeout`` how long sends and fetches keep trying while
    the server is unreachable. ``options`` go to ``nats.connect`` (credentials, TLS, ...).
    """

    def __init__(
        self,
        name: str,
        url: str = "nats://127.0.0.1:4222",
        *,
        stream: str | None = None,
        subject: str | None = None,
        durable: str | None = None,
        ack_wait: float = 30.0,
        batch_size: int = 100,
        timeout: float = 5.0,
        reconnect_timeout: float = 60.0,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.url = url
        self.stream = stream or "busway_" + _UNSAFE_NAME.sub("_", name)
        self.subject = subject or "busway." + re.sub(r"[\s*>]", "_", name)
        self.durable = durable or "busway"
        self._counting = True
        self.ack_wait = ack_wait
        self.batch_size = batch_size
        self.timeout = timeout
        self.reconnect_timeout = reconnect_timeout
        self.options = dict(options or {})
        self._clock: Callable[[], float] = time.time
        self._links: dict[asyncio.AbstractEventLoop, asyncio.Task[Link]] = {}
        self._sync_link: Link | None = None
        self._deferred: weakref.WeakKeyDictionary[Batch, dict[Link, Deferred]] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return f"NatsChannel({self.name!r}, {self.url!r}, stream={self.stream!r})"

    def attach(self, context: ChannelContext) -> None:
        self._clock = context.clock
        self._counting = context.max_crashes is not None

    def validate(self) -> list[str]:
        problems = []
        for what, value in (("stream", self.stream), ("durable", self.durable)):
            if not value or _UNSAFE_NAME.search(value):
                problems.append(
                    f"NATS channel {self.name!r}: {what} name {value!r} may hold only letters, "
                    "digits, '-' and '_'"
                )
        if self.ack_wait <= 0 or self.batch_size < 1:
            problems.append(
                f"NATS channel {self.name!r}: ack_wait must be positive and batch_size at least 1"
            )
        return problems

    # -- sync edge: the same coroutines, run on busway's helper loop --------------------------

    def setup(self) -> None:
        run_coroutine(self.asetup())

    def send(self, envelope: Envelope) -> None:
        link = self._sync_link
        if link is None or link.client.is_closed:
            link = self._sync_link = run_coroutine(self._link(check=False))
        batch = current_batch.get()
        if batch is not None:
            deferred = self._deferred_for(batch, link)
            link.queued.put(partial(deferred.publish, envelope, batch.current))
            return
        if threading.get_ident() == link.thread:  # waiting here would stop the loop
            run_coroutine(self._publish(envelope))  # which refuses, saying what to do
            return
        # A first try without a task on the loop; on any trouble, the tries of asend.
        headers = {HEADERS: encode_headers(envelope.headers, self.name)}
        error = link.acks.publish_from_thread(self.subject, envelope.body, headers, self.timeout)
        if error is not None:
            run_coroutine(self._publish(envelope, error))

    def consume(self, handle: Handle, max_messages: int, wait: float) -> int:
        link, messages = run_coroutine(self._fetch(min(max_messages, self.batch_size), wait))
        hand = Hand(self.name, messages, self._clock, self.ack_wait)
        try:
            for message, delivery in hand:
                handle(delivery)
                hand.done()
                link.queued.put(message.ack)
                if hand.slow():
                    run_coroutine(link.extend(hand))
        except MessageReturned:
            pass
        finally:
            run_coroutine(link.settle(hand))
        return hand.handled

    def depth(self) -> int:
        return run_coroutine(self.adepth())

    def close(self) -> None:
        self._sync_link = None
        here = running_loop()
        for loop in list(self._links):
            if loop is here:
                continue
            link = self._links.pop(loop, None)
            if link is not None and loop.is_running() and link.done() and not link.cancelled():
                with contextlib.suppress(Exception):
                    asyncio.run_coroutine_threadsafe(close_link(link), loop).result(self.timeout)

    # -- asyncio edge ---------------------------------------------------------------------

    async def asetup(self) -> None:
        link = await self._link(check=False)
        await declare(link.js, self)

    async def asend(self, envelope: Envelope) -> None:
        batch = current_batch.get()
        if batch is None:
            await self._publish(envelope)
        else:
            link = await self._link(check=False)
            await self._deferred_for(batch, link).publish(envelope, batch.current)

    async def aconsume(self, handle: AsyncHandle, max_messages: int, wait: float) -> int:
        link, messages = await self._fetch(min(max_messages, self.batch_size), wait)
        hand = Hand(self.name, messages, self._clock, self.ack_wait)
        try:
            for message, delivery in hand:
                await handle(delivery)
                hand.done()
                await message.ack()
                if hand.slow():
                    await link.extend(hand)
        except MessageReturned:
            pass
        finally:
            await link.settle(hand)
        return hand.handled

    async def adepth(self) -> int:
        link = await self._link()
        info = await link.js.consumer_info(self.stream, self.durable, timeout=self.timeout)
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    async def aclose(self) -> None:
        task = self._links.pop(asyncio.get_running_loop(), None)
        if task is not None and task.done() and not task.cancelled():
            await close_link(task)
        if self._links:
            await asyncio.to_thread(self.close)

    # -- the logic both edges share -------------------------------------------------------

    async def _link(self, check: bool = True) -> Link:
        """This event loop's connection, made on first use."""
        loop = asyncio.get_running_loop()
        task = self._links.get(loop)
        if task is not None and task.done():
            if usable(task) and (task.result().checked or not check):
                return task.result()
            if not usable(task):
                task = None
        if task is None:
            for other in [other for other in self._links if other.is_closed()]:
                del self._links[other]
            task = self._links[loop] = loop.create_task(connect(self, loop))
        try:
            link = await asyncio.shield(task)
        except BaseException:
            if task.done() and self._links.get(loop) is task:
                del self._links[loop]
            raise
        if check and not link.checked:
            await self._check_consumer(link)
        return link

    async def _check_consumer(self, link: Link) -> None:
        """A pull for a consumer that does not exist gets no answer: say why, early."""
        try:
            await link.js.consumer_info(self.stream, self.durable, timeout=self.timeout)
        except nats.js.errors.NotFoundError as error:
            raise ConfigurationError(
                f"NATS channel {self.name!r}: consumer {self.durable!r} of stream "
                f"{self.stream!r} does not exist on {self.url}; run messaging.setup() or "
                "`busway setup` first"
            ) from error
        link.checked = True

    async def _publish(self, envelope: Envelope, failed: BaseException | None = None) -> None:
        """Publish and wait for JetStream's ack, trying again while the server is away;
        ``failed`` is the error of a first try already made.

        A publish whose ack was lost may be stored twice: the consumer's inbox absorbs it
        (a ``Nats-Msg-Id`` header would let the server drop it, but costs about 8 % of the
        publish rate, on every message).
        """
        link = await self._link(check=False)
        headers = {HEADERS: encode_headers(envelope.headers, self.name)}
        deadline = time.monotonic() + self.reconnect_timeout
        pause = 0.05
        error = failed or await self._publish_once(link, envelope.body, headers)
        while error is not None:
            if not transient(error):
                raise failure(self, error)
            if time.monotonic() + pause > deadline:
                raise ConnectionError(
                    f"NATS channel {self.name!r}: no publish ack from {self.url} within "
                    f"{self.reconnect_timeout:g}s: {type(error).__name__} {error}"
                ) from error
            if isinstance(error, nats.js.errors.NoStreamResponseError):
                await require_stream(link.js, self)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)
            error = await self._publish_once(link, envelope.body, headers)

    async def _publish_once(
        self, link: Link, body: bytes, headers: dict[str, str]
    ) -> BaseException | None:
        """``None`` once JetStream stored the message, else what went wrong."""
        ack = await link.acks.publish(self.subject, body, headers)
        try:
            async with asyncio.timeout(self.timeout):
                await ack
        except TimeoutError:
            return nats.errors.TimeoutError()
        except Exception as error:
            return error
        return None

    def _deferred_for(self, batch: Batch, link: Link) -> Deferred:
        """In a batch (a relay's, say), publish acks are awaited once, before its own acks."""
        per_link = self._deferred.setdefault(batch, {})
        deferred = per_link.get(link)
        if deferred is None:
            deferred = per_link[link] = Deferred(self, link, batch)
            batch.before_ack.append(deferred.before_ack)
        return deferred

    def _more(self, messages: list[Msg], count: int) -> bool:
        """Whether to fetch the rest of a batch after ``messages``: not after a suspect.

        JetStream hands out redeliveries first: after a suspect, more would most likely be
        suspects too, in hand with it if it kills the worker, and a death would count against
        each of them. Fetched alone, it is alone in hand.
        """
        return 0 < len(messages) < count and not (self._counting and suspect(messages[0]))

    async def _fetch(self, count: int, wait: float) -> tuple[Link, list[Msg]]:
        """Up to ``count`` messages: those ready now, else the first to come within ``wait``."""
        link = await self._link()
        deadline = time.monotonic() + self.reconnect_timeout
        while True:
            await link.connected(deadline, self)
            served = True
            async with link.pulling:
                try:
                    # Counting deaths, one first: a suspect is handed out alone (see _more).
                    messages = await link.pull(1 if self._counting else count, None)
                    if not messages and wait > 0:
                        messages = await link.pull(1, wait)
                    if self._more(messages, count):
                        messages += await link.pull(count - len(messages), None)
                except Unavailable:
                    messages, served = [], False
            # Nothing, because the server was away, is not "empty": ask again when it is back.
            if messages or (served and link.client.is_connected):
                return link, messages
            if time.monotonic() > deadline:
                raise ConnectionError(
                    f"NATS channel {self.name!r}: JetStream on {self.url} has not served "
                    f"consumer {self.durable!r} for {self.reconnect_timeout:g}s"
                )
            await asyncio.sleep(0.1)
