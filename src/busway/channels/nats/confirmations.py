"""The publishes of one batch, whose JetStream acks the batch awaits once, at its end."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from busway.channels.base import Envelope
from busway.channels.nats.headers import HEADERS, encode_headers
from busway.channels.nats.link import Link
from busway.channels.nats.queued import running_loop

if TYPE_CHECKING:
    from busway.channels.nats.channel import NatsChannel


class Confirmations:
    """Publishes of one batch on one connection, whose acks the batch awaits once, at its end."""

    def __init__(self, channel: NatsChannel, link: Link) -> None:
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
        if running_loop() is self.link.loop:
            return self.wait()
        waiting = asyncio.run_coroutine_threadsafe(self.wait(), self.link.loop)
        if running_loop() is None:
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
