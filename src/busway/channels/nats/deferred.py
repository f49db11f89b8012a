"""A batch's sends, deferred until before its acknowledgement: publishes whose JetStream acks
are awaited once, then.

Each publish is tagged with the batch's message in hand when it was sent (``Batch.current``).
At the end, a publish that JetStream refused, or that is still unacknowledged when
``reconnect_timeout`` has passed, fails for good; the batch is told which messages those were
(``Batch.unsent``), so that a relay keeps back only them and acknowledges the rest.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors

from busway.channels.base import Batch, Envelope
from busway.channels.nats.link import Link, transient
from busway.channels.nats.queued import running_loop
from busway.channels.nats.topology import failure, require_stream
from busway.channels.nats.wire import HEADERS, encode_headers
from busway.errors import ConfigurationError, ConversionError

if TYPE_CHECKING:
    from busway.channels.nats.channel import NatsChannel

_FIRST_PAUSE = 0.05
_LONGEST_PAUSE = 1.0


@dataclass(eq=False)
class _Publish:
    """One message on its way to JetStream, and the batch's message it was sent for."""

    body: bytes
    headers: dict[str, str]
    source: Hashable | None
    ack: asyncio.Future[None] | None = None
    error: BaseException | None = None
    """The error of the latest try; once settled, the reason it failed for good."""

    def outcome(self) -> BaseException | None:
        """``None`` once acknowledged; else the error, a timeout for an ack not come yet."""
        if self.ack is None:
            return self.error
        if not self.ack.done():
            self.ack.cancel()  # no longer awaited
        if self.ack.cancelled():
            return nats.errors.TimeoutError()
        return self.ack.exception()


class Deferred:
    """Publishes of one batch on one connection, whose acks the batch awaits once, at its end."""

    def __init__(self, channel: NatsChannel, link: Link, batch: Batch) -> None:
        self.channel = channel
        self.link = link
        self._batch = weakref.ref(batch)  # the channel's map of batches holds them weakly
        self.sent: list[_Publish] = []

    async def publish(self, envelope: Envelope, source: Hashable | None) -> None:
        """Publish without waiting for the ack; ``source`` is the batch's message in hand."""
        try:
            headers = {HEADERS: encode_headers(envelope.headers, self.channel.name)}
        except ConversionError as error:
            self.sent.append(_Publish(envelope.body, {}, source, error=error))
            return
        publish = _Publish(envelope.body, headers, source)
        self.sent.append(publish)
        await self._send(publish)

    def before_ack(self) -> Awaitable[None] | None:
        """The batch's ``before_ack`` callback: awaitable on the connection's own loop, or any
        other running loop; from sync code, blocks until done."""
        if running_loop() is self.link.loop:
            return self.settle()
        waiting = asyncio.run_coroutine_threadsafe(self.settle(), self.link.loop)
        if running_loop() is None:
            waiting.result()
            return None
        return asyncio.wrap_future(waiting)

    async def settle(self) -> None:
        """Wait for every ack, publishing again what the connection lost; raise the batch's
        ``unsent`` error for the publishes that failed for good."""
        await self.link.queued.run()  # the publishes queued by a sync batch are all out
        sent, self.sent = self.sent, []
        await self._confirm(sent)
        failures = [(publish.source, publish.error) for publish in sent if publish.error]
        if failures:
            batch = self._batch()
            assert batch is not None, "a batch outlives its before_ack callbacks"
            raise batch.unsent(failures)

    async def _send(self, publish: _Publish) -> None:
        publish.error = None
        publish.ack = await self.link.acks.publish(
            self.channel.subject, publish.body, publish.headers
        )

    async def _confirm(self, sent: list[_Publish]) -> None:
        """Leave in each publish of ``sent`` the error it failed with for good, if any."""
        channel = self.channel
        deadline = time.monotonic() + channel.reconnect_timeout
        pending, pause = sent, _FIRST_PAUSE
        while pending:
            if await self._acks_or_reconnect(pending, deadline):
                continue
            again: list[_Publish] = []
            for publish in pending:
                error = publish.outcome()
                if error is not None and transient(error):
                    publish.error = error
                    again.append(publish)
                else:
                    publish.error = None if error is None else failure(channel, error)
            again = await self._stream_missing(again)
            if again and time.monotonic() + pause > deadline:
                lost = again[0].error
                error = ConnectionError(
                    f"NATS channel {channel.name!r}: no publish ack from {channel.url} within "
                    f"{channel.reconnect_timeout:g}s: {type(lost).__name__} {lost}"
                )
                error.__cause__ = lost
                for publish in again:
                    publish.error = error
                return
            if again:
                await asyncio.sleep(pause)
                pause = min(pause * 2, _LONGEST_PAUSE)
                for publish in again:
                    await self._send(publish)
            pending = again

    async def _acks_or_reconnect(self, pending: list[_Publish], deadline: float) -> bool:
        """Wait a request's time for the acks; whether the connection was lost meanwhile and
        is back, when publishes it held while away have just gone out: wait for them again."""
        link = self.link
        reconnects = link.reconnects
        waiting = [p.ack for p in pending if p.ack is not None and not p.ack.done()]
        if waiting:
            until = min(deadline, time.monotonic() + self.channel.timeout)
            await asyncio.wait(waiting, timeout=max(until - time.monotonic(), 0.0))
        if link.reconnects == reconnects and link.client.is_connected:
            return False
        try:
            await link.connected(deadline, self.channel)
        except ConnectionError:  # closed, or away until the deadline: what is pending failed
            return False
        return True

    async def _stream_missing(self, again: list[_Publish]) -> list[_Publish]:
        """Those of ``again`` still worth a try: no stream answering fails for good, unless
        the stream is there and was only electing a leader."""
        if not any(isinstance(p.error, nats.js.errors.NoStreamResponseError) for p in again):
            return again
        try:
            await require_stream(self.link.js, self.channel)
        except ConfigurationError as missing:
            for publish in again:
                if isinstance(publish.error, nats.js.errors.NoStreamResponseError):
                    publish.error = missing
        return [publish for publish in again if not isinstance(publish.error, ConfigurationError)]
