"""NATS JetStream: a stream and a durable pull consumer, explicit ack, nak with delay.

nats-py is asyncio-only. The asyncio methods use a connection on the caller's event loop; the
sync methods run the same coroutines on busway's helper loop, through one connection living
there, and call the handler in the caller's thread. Delays: a message fetched before its
time is given back with ``nak(delay)``, and JetStream hands it out again when it is due.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import msgspec

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
from busway.errors import ConfigurationError, ConversionError, MissingExtraError
from busway.message import HeaderValue

try:
    import nats.errors
    import nats.js.errors
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext
    from nats.js.api import (
        AckPolicy,
        ConsumerConfig,
        RetentionPolicy,
        StorageType,
        StreamConfig,
    )
except ModuleNotFoundError as error:  # pragma: no cover - depends on the installed extras
    if (error.name or "nats").split(".")[0] != "nats":
        raise
    raise MissingExtraError("the NATS JetStream channel (busway.nats)", "nats") from error

log = logging.getLogger("busway.nats")

HEADERS = "busway-headers"
"""The NATS header carrying busway's headers, as one JSON object (typed values survive)."""

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_-]")
_NO_WAIT_GRACE = 5.0
"""How long a pull that the server answers at once may take before it counts as lost."""

# Connection trouble that a retry after reconnecting can cure.
_TRANSIENT = (
    nats.errors.TimeoutError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)


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
        self.ack_wait = ack_wait
        self.batch_size = batch_size
        self.timeout = timeout
        self.reconnect_timeout = reconnect_timeout
        self.options = dict(options or {})
        self._clock: Callable[[], float] = time.time
        self._links: dict[asyncio.AbstractEventLoop, asyncio.Task[_Link]] = {}
        self._sync_link: _Link | None = None
        self._confirmations: weakref.WeakKeyDictionary[Batch, dict[_Link, _Confirmations]] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return f"NatsChannel({self.name!r}, {self.url!r}, stream={self.stream!r})"

    def attach(self, context: ChannelContext) -> None:
        self._clock = context.clock

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
        batch = current_batch.get()
        if batch is None:
            run_coroutine(self._publish(envelope))
            return
        link = self._sync_link
        if link is None or link.client.is_closed:
            link = self._sync_link = run_coroutine(self._link(check=False))
        link.queued.put(partial(self._confirmations_for(batch, link).publish, envelope))

    def consume(self, handle: Handle, max_messages: int, wait: float) -> int:
        link, messages = run_coroutine(self._fetch(min(max_messages, self.batch_size), wait))
        hand = _Hand(self, messages)
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
        here = _running_loop()
        for loop in list(self._links):
            if loop is here:
                continue
            link = self._links.pop(loop, None)
            if link is not None and loop.is_running() and link.done() and not link.cancelled():
                with contextlib.suppress(Exception):
                    asyncio.run_coroutine_threadsafe(_close(link), loop).result(self.timeout)

    # -- asyncio edge ---------------------------------------------------------------------

    async def asetup(self) -> None:
        link = await self._link(check=False)
        await _declare(link.js, self)

    async def asend(self, envelope: Envelope) -> None:
        batch = current_batch.get()
        if batch is None:
            await self._publish(envelope)
        else:
            link = await self._link(check=False)
            await self._confirmations_for(batch, link).publish(envelope)

    async def aconsume(self, handle: AsyncHandle, max_messages: int, wait: float) -> int:
        link, messages = await self._fetch(min(max_messages, self.batch_size), wait)
        hand = _Hand(self, messages)
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
            await _close(task)
        if self._links:
            await asyncio.to_thread(self.close)

    # -- the logic both edges share -------------------------------------------------------

    async def _link(self, check: bool = True) -> _Link:
        """This event loop's connection, made on first use."""
        loop = asyncio.get_running_loop()
        task = self._links.get(loop)
        if task is not None and task.done():
            if _usable(task) and (task.result().checked or not check):
                return task.result()
            if not _usable(task):
                task = None
        if task is None:
            for other in [other for other in self._links if other.is_closed()]:
                del self._links[other]
            task = self._links[loop] = loop.create_task(self._connect(loop))
        try:
            link = await asyncio.shield(task)
        except BaseException:
            if task.done() and self._links.get(loop) is task:
                del self._links[loop]
            raise
        if check and not link.checked:
            await self._check_consumer(link)
        return link

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Link:
        link = _Link(Client(), loop)
        options: dict[str, Any] = {
            "servers": [self.url],
            "name": f"busway {self.name}",
            "connect_timeout": min(self.timeout, 2.0),
            "reconnect_time_wait": 0.25,
            "max_reconnect_attempts": -1,
            "error_cb": link.on_error,
            "disconnected_cb": link.on_disconnected,
            "reconnected_cb": link.on_reconnected,
            **self.options,
        }
        try:
            await asyncio.wait_for(link.client.connect(**options), self.timeout)
        except (TimeoutError, OSError, nats.errors.Error) as error:
            with contextlib.suppress(Exception):
                await link.client.close()
            raise ConnectionError(
                f"NATS channel {self.name!r} cannot connect to {self.url}: "
                f"{type(error).__name__} {error}; is the server running there?"
            ) from error
        link.js = link.client.jetstream(timeout=self.timeout)
        link.next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.durable}"
        link.inbox = link.client.new_inbox()
        await link.client.subscribe(f"{link.inbox}.*", cb=link.on_message)
        return link

    async def _check_consumer(self, link: _Link) -> None:
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

    async def _publish(self, envelope: Envelope) -> None:
        """Publish and wait for JetStream's ack, trying again while the server is away.

        A publish whose ack was lost may be stored twice: the consumer's inbox absorbs it
        (a ``Nats-Msg-Id`` header would let the server drop it, but costs about 8 % of the
        publish rate, on every message).
        """
        link = await self._link(check=False)
        headers = {HEADERS: encode_headers(envelope.headers, self.name)}
        deadline = time.monotonic() + self.reconnect_timeout
        pause = 0.05
        while True:
            try:
                await link.js.publish(self.subject, envelope.body, headers=headers)
                return
            except _TRANSIENT as error:
                if time.monotonic() + pause > deadline:
                    raise ConnectionError(
                        f"NATS channel {self.name!r}: no publish ack from {self.url} within "
                        f"{self.reconnect_timeout:g}s: {type(error).__name__} {error}"
                    ) from error
                if isinstance(error, nats.js.errors.NoStreamResponseError):
                    await self._require_stream(link)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)

    def _confirmations_for(self, batch: Batch, link: _Link) -> _Confirmations:
        """In a batch (a relay's, say), publish acks are awaited once, before its own acks."""
        per_link = self._confirmations.setdefault(batch, {})
        confirmations = per_link.get(link)
        if confirmations is None:
            confirmations = per_link[link] = _Confirmations(self, link)
            batch.before_ack.append(confirmations.callback)
        return confirmations

    async def _require_stream(self, link: _Link) -> None:
        with contextlib.suppress(*_TRANSIENT):
            try:
                await link.js.stream_info(self.stream)
            except nats.js.errors.NotFoundError as error:
                raise ConfigurationError(
                    f"NATS channel {self.name!r}: stream {self.stream!r} does not exist on "
                    f"{self.url}; run messaging.setup() or `busway setup` first"
                ) from error

    async def _fetch(self, count: int, wait: float) -> tuple[_Link, list[Msg]]:
        """Up to ``count`` messages: those ready now, else the first to come within ``wait``."""
        link = await self._link()
        deadline = time.monotonic() + self.reconnect_timeout
        while True:
            await link.connected(deadline, self)
            served = True
            async with link.pulling:
                try:
                    messages = await link.pull(count, None)
                    if not messages and wait > 0:
                        messages = await link.pull(1, wait)
                        if messages and count > 1:
                            messages += await link.pull(count - 1, None)
                except _Unavailable:
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


class _Unavailable(Exception):
    """JetStream answered a pull with 503: not ready yet (a server just restarted, say)."""


@dataclass(eq=False)
class _Link:
    """One connection to NATS, on the event loop that made it, with its pull inbox."""

    client: Client
    loop: asyncio.AbstractEventLoop
    js: JetStreamContext = field(init=False)
    next_subject: str = ""
    inbox: str = ""
    checked: bool = False
    arrived: deque[Msg] = field(default_factory=deque)
    signal: asyncio.Event = field(default_factory=asyncio.Event)
    up: asyncio.Event = field(default_factory=asyncio.Event)
    pulling: asyncio.Lock = field(default_factory=asyncio.Lock)
    requests: int = 0
    queued: _Queued = field(init=False)

    def __post_init__(self) -> None:
        self.up.set()
        self.queued = _Queued(self.loop)

    async def on_message(self, message: Msg) -> None:
        self.arrived.append(message)
        self.signal.set()

    async def on_error(self, error: Exception) -> None:
        log.warning("NATS connection: %s %s", type(error).__name__, error)

    async def on_disconnected(self) -> None:
        self.up.clear()

    async def on_reconnected(self) -> None:
        log.info("NATS connection restored")
        self.up.set()

    async def connected(self, deadline: float, channel: NatsChannel) -> None:
        while not self.client.is_connected:
            if self.client.is_closed or time.monotonic() > deadline:
                raise ConnectionError(
                    f"NATS channel {channel.name!r}: {channel.url} has been unreachable for "
                    f"{channel.reconnect_timeout:g}s"
                )
            self.up.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.up.wait(), 0.25)

    async def pull(self, count: int, expires: float | None) -> list[Msg]:
        """One pull request: ``count`` at most, at once (``expires`` None) or within it.

        Every request has its own reply subject, so the status ending it (404 no messages,
        408 expired) is told apart from a late status of an earlier request. Messages of an
        earlier request that came late are as good as any: they are taken too.
        """
        self.requests += 1
        reply = f"{self.inbox}.{self.requests}"
        request: dict[str, Any] = {"batch": count}
        if expires is None:
            request["no_wait"] = True
        else:
            request["expires"] = int(max(expires, 0.01) * 1e9)
        await self.client.publish(self.next_subject, json.dumps(request).encode(), reply=reply)
        deadline = time.monotonic() + (expires or 0.0) + _NO_WAIT_GRACE
        messages: list[Msg] = []
        while len(messages) < count:
            if not self.arrived:
                self.signal.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.signal.wait(), deadline - time.monotonic())
                if not self.arrived:
                    break
            message = self.arrived.popleft()
            if not message.subject.startswith(self.inbox):
                messages.append(message)
            elif message.subject == reply and _ends_request(message):
                break
        return messages

    async def extend(self, hand: _Hand) -> None:
        """A slow batch: tell JetStream the messages still waiting in it are in hand."""
        for message in hand.waiting():
            await message.in_progress()

    async def settle(self, hand: _Hand) -> None:
        """Send the acks still queued; give back what was not handled."""
        await self.queued.run()
        for message, deliver_at in hand.later:
            await message.nak(delay=max(0.0, deliver_at - hand.clock()))
        for message in hand.unhandled():
            await message.nak()


class _Queued:
    """Work for a loop, queued from other threads and done in order by one task.

    Only the first item queued after the queue ran dry wakes the loop: a hop to the loop for
    each message (an ack, a publish in a relay's batch) would cost more than handling it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.work: deque[Callable[[], Awaitable[Any]]] = deque()
        self.waking = False
        self.running = asyncio.Lock()
        self.tasks: set[asyncio.Task[None]] = set()

    def put(self, work: Callable[[], Awaitable[Any]]) -> None:
        self.work.append(work)
        if not self.waking:
            self.waking = True
            self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        task = self.loop.create_task(self.run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run(self) -> None:
        """Do everything queued so far (awaited on the loop, it also waits for a run going on)."""
        self.waking = False  # first: whatever is queued from now on wakes the loop again
        async with self.running:
            while self.work:
                try:
                    await self.work.popleft()()
                except Exception as error:  # an ack lost with the connection comes back later
                    log.warning("NATS: %s %s", type(error).__name__, error)


def _ends_request(status: Msg) -> bool:
    code = (status.headers or {}).get("Status", "")
    if code == "503":
        raise _Unavailable
    if code == "409" and "Deleted" in (status.headers or {}).get("Description", ""):
        raise ConfigurationError("the NATS consumer was deleted; run messaging.setup() again")
    return code != "100"  # 100 is a heartbeat; 404, 408 and 409 end the request


class _Hand:
    """A fetched batch handed out one message at a time, and what is left to give back."""

    def __init__(self, channel: NatsChannel, messages: list[Msg]) -> None:
        self.channel = channel.name
        self.messages = messages
        self.clock = channel._clock
        self.extend_every = channel.ack_wait / 2
        self.extended = time.monotonic()
        self.position = 0
        self.handled = 0
        self.in_hand: Msg | None = None
        self.later: list[tuple[Msg, float]] = []
        """Fetched before their time, with that time: to be given back until then."""

    def __iter__(self) -> Iterator[tuple[Msg, Delivery]]:
        while self.position < len(self.messages):
            message = self.messages[self.position]
            self.position += 1
            envelope = Envelope(message.data, decode_headers(message.headers))
            deliver_at = envelope.deliver_at
            if deliver_at is not None and deliver_at > self.clock():
                self.later.append((message, deliver_at))
                continue
            self.in_hand = message
            redelivered = message.metadata.num_delivered > 1
            yield message, Delivery(envelope, self.channel, redelivered=redelivered)

    def done(self) -> None:
        self.in_hand = None
        self.handled += 1

    def slow(self) -> bool:
        """Whether the batch is half way to its ack_wait since it started or last said so."""
        now = time.monotonic()
        if now - self.extended < self.extend_every or not self.waiting():
            return False
        self.extended = now
        return True

    def waiting(self) -> list[Msg]:
        return [message for message, _ in self.later] + self.messages[self.position :]

    def unhandled(self) -> list[Msg]:
        rest = self.messages[self.position :]
        return [self.in_hand, *rest] if self.in_hand is not None else rest


class _Confirmations:
    """Publishes of one batch on one connection, whose acks the batch awaits once, at its end."""

    def __init__(self, channel: NatsChannel, link: _Link) -> None:
        self.channel = channel
        self.link = link
        self.acks: list[asyncio.Future[Any]] = []
        self.failure: Exception | None = None

    async def publish(self, envelope: Envelope) -> None:
        try:
            headers = {HEADERS: encode_headers(envelope.headers, self.channel.name)}
            self.acks.append(
                await self.link.js.publish_async(
                    self.channel.subject, envelope.body, headers=headers
                )
            )
        except Exception as error:
            self.failure = self.failure or error

    def callback(self) -> Awaitable[None] | None:
        """Awaitable on the connection's own loop; from a sync batch, blocks until done."""
        if _running_loop() is self.link.loop:
            return self.wait()
        waiting = asyncio.run_coroutine_threadsafe(self.wait(), self.link.loop)
        if _running_loop() is None:
            waiting.result()
            return None
        return asyncio.wrap_future(waiting)

    async def wait(self) -> None:
        await self.link.queued.run()  # the publishes queued by a sync batch are all out
        acks, self.acks = self.acks, []
        try:
            if self.failure is not None:
                raise self.failure
            await asyncio.wait_for(asyncio.gather(*acks), self.channel.reconnect_timeout)
        except Exception as error:
            for ack in acks:
                ack.cancel()
            raise ConnectionError(
                f"NATS channel {self.channel.name!r}: {self.channel.url} did not confirm "
                f"every message of this batch: {type(error).__name__} {error}"
            ) from error
        finally:
            self.failure = None


async def _declare(js: JetStreamContext, channel: NatsChannel) -> None:
    """The stream (unless one already takes the subject) and the durable pull consumer."""
    try:
        info = await js.stream_info(channel.stream)
    except nats.js.errors.NotFoundError:
        await js.add_stream(
            StreamConfig(
                name=channel.stream,
                subjects=[channel.subject],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
            )
        )
    else:
        subjects = (info.config.subjects or []) if info.config else []
        if not any(subject_matches(pattern, channel.subject) for pattern in subjects):
            raise ConfigurationError(
                f"NATS channel {channel.name!r}: stream {channel.stream!r} exists but does not "
                f"take subject {channel.subject!r} (it takes {', '.join(subjects) or 'none'}); "
                "add the subject to the stream or choose another stream name"
            )
    await js.add_consumer(
        channel.stream,
        ConsumerConfig(
            durable_name=channel.durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=channel.ack_wait,
            max_deliver=-1,  # busway's retry policy decides, and re-sends retries anew
            max_ack_pending=-1,  # messages waiting out a nak delay count as pending
        ),
    )


async def _close(task: Awaitable[_Link]) -> None:
    """Send what is queued, give back messages that came too late to be handed out, close."""
    link = await task
    with contextlib.suppress(Exception):
        await link.queued.run()
        for message in link.arrived:
            if not message.subject.startswith(link.inbox):
                await message.nak()
    with contextlib.suppress(Exception):
        await link.client.drain()
    with contextlib.suppress(Exception):
        await link.client.close()


def encode_headers(headers: Mapping[str, HeaderValue], channel: str = "?") -> str:
    """busway's headers as one JSON object in ASCII (NATS header values are one text line)."""
    try:
        encoded = msgspec.json.encode(headers)
    except TypeError as error:
        raise ConversionError(
            f"a header of a message for channel {channel!r} is not JSON: {error}; "
            "header values must be str, int, float, bool or None"
        ) from error
    if encoded.isascii():
        return encoded.decode()
    return json.dumps(dict(headers), ensure_ascii=True, separators=(",", ":"))


def decode_headers(headers: Mapping[str, str] | None) -> dict[str, HeaderValue]:
    """busway's headers back from a message; a foreign message keeps its plain headers."""
    if not headers:
        return {}
    encoded = headers.get(HEADERS)
    if encoded is not None:
        with contextlib.suppress(msgspec.DecodeError):
            decoded = msgspec.json.decode(encoded)
            if isinstance(decoded, dict):
                return decoded
    return dict(headers)


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether NATS subject ``pattern`` (with ``*`` and ``>`` wildcards) takes ``subject``."""
    wanted, tokens = pattern.split("."), subject.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(tokens) > index
        if index >= len(tokens) or token not in ("*", tokens[index]):
            return False
    return len(tokens) == len(wanted)


def _usable(task: asyncio.Task[_Link]) -> bool:
    return not (task.cancelled() or task.exception() or task.result().client.is_closed)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
