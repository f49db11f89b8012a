"""One connection to NATS, on the event loop that made it, with the inbox its pulls answer to."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from busway.channels.nats.acks import Acks
from busway.channels.nats.queued import Queued
from busway.errors import ConfigurationError

if TYPE_CHECKING:
    from busway.channels.nats.channel import NatsChannel
    from busway.channels.nats.hand import Hand

log = logging.getLogger("busway.nats")

TRANSIENT = (
    nats.errors.TimeoutError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)
"""Connection trouble that a retry after reconnecting can cure (see ``transient``)."""

_STORE_FAILED = 10077
"""JetStream's code for a message its stream refused to store: the stream is full."""

_NO_WAIT_GRACE = 5.0
"""How long a pull that the server answers at once may take before it counts as lost."""


class Unavailable(Exception):
    """JetStream answered a pull with 503: not ready yet (a server just restarted, say)."""


@dataclass(eq=False)
class Link:
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
    reconnects: int = 0
    queued: Queued = field(init=False)
    acks: Acks = field(init=False)
    thread: int = field(default_factory=threading.get_ident)
    """The thread of the loop: made there, by ``connect``."""

    def __post_init__(self) -> None:
        self.up.set()
        self.queued = Queued(self.loop)

    async def on_message(self, message: Msg) -> None:
        self.arrived.append(message)
        self.signal.set()

    async def on_error(self, error: Exception) -> None:
        log.warning("NATS connection: %s %s", type(error).__name__, error)

    async def on_disconnected(self) -> None:
        self.up.clear()

    async def on_reconnected(self) -> None:
        log.info("NATS connection restored")
        self.reconnects += 1
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

    async def extend(self, hand: Hand) -> None:
        """A slow batch: tell JetStream the messages still waiting in it are in hand."""
        for message in hand.waiting():
            await message.in_progress()

    async def settle(self, hand: Hand) -> None:
        """Send the acks still queued; give back what was not handled."""
        await self.queued.run()
        for message, deliver_at in hand.later:
            await message.nak(delay=max(0.0, deliver_at - hand.clock()))
        for message in hand.unhandled():
            await message.nak()


def transient(error: BaseException) -> bool:
    """Whether a retry after reconnecting can cure ``error``; a full stream refuses with 503
    too, but stays full until consumers make room."""
    if isinstance(error, nats.js.errors.ServiceUnavailableError):
        return error.err_code != _STORE_FAILED
    return isinstance(error, TRANSIENT)


def _ends_request(status: Msg) -> bool:
    code = (status.headers or {}).get("Status", "")
    if code == "503":
        raise Unavailable
    if code == "409" and "Deleted" in (status.headers or {}).get("Description", ""):
        raise ConfigurationError("the NATS consumer was deleted; run messaging.setup() again")
    return code != "100"  # 100 is a heartbeat; 404, 408 and 409 end the request


async def connect(channel: NatsChannel, loop: asyncio.AbstractEventLoop) -> Link:
    """A new connection for ``channel`` on ``loop``, subscribed to its pull inbox."""
    link = Link(Client(), loop)
    options: dict[str, Any] = {
        "servers": [channel.url],
        "name": f"busway {channel.name}",
        "connect_timeout": min(channel.timeout, 2.0),
        "reconnect_time_wait": 0.25,
        "max_reconnect_attempts": -1,
        "error_cb": link.on_error,
        "disconnected_cb": link.on_disconnected,
        "reconnected_cb": link.on_reconnected,
        **channel.options,
    }
    try:
        await asyncio.wait_for(link.client.connect(**options), channel.timeout)
    except (TimeoutError, OSError, nats.errors.Error) as error:
        with contextlib.suppress(Exception):
            await link.client.close()
        raise ConnectionError(
            f"NATS channel {channel.name!r} cannot connect to {channel.url}: "
            f"{type(error).__name__} {error}; is the server running there?"
        ) from error
    link.js = link.client.jetstream(timeout=channel.timeout)
    link.next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{channel.stream}.{channel.durable}"
    link.inbox = link.client.new_inbox()
    await link.client.subscribe(f"{link.inbox}.*", cb=link.on_message)
    link.acks = Acks(link.client, loop, link.queued)
    await link.acks.subscribe()
    return link


async def close_link(task: Awaitable[Link]) -> None:
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


def usable(task: asyncio.Task[Link]) -> bool:
    """Whether a connection attempt succeeded and its connection is still open."""
    return not (task.cancelled() or task.exception() or task.result().client.is_closed)
