"""``RedisChannel``: messages in a Redis stream, read through a consumer group."""

from __future__ import annotations

import functools
import logging
import os
import secrets
import socket
import time
import weakref
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio

from busway.channels.base import (
    AsyncHandle,
    Batch,
    Channel,
    ChannelContext,
    Envelope,
    Handle,
    current_batch,
)
from busway.channels.redis._async import consuming as aconsuming
from busway.channels.redis._sync import consuming
from busway.channels.redis.consumer import RedisConsumer
from busway.channels.redis.deferred import Deferred
from busway.channels.redis.link import Link
from busway.channels.redis.stream import Command, Stream

log = logging.getLogger("busway.redis")


class RedisChannel(Channel):
    """A channel on a Redis stream, consumed through a consumer group (Redis 7 or later).

    ``stream`` defaults to ``busway:{NAME}``; delayed messages wait in ``STREAM:delayed``.
    Every process reads as its own consumer of ``group`` (named ``consumer``, by default from
    the host, the process and a random part). Entries a consumer left pending for
    ``claim_idle`` seconds are claimed by another: keep handlers well within it. Commands
    that lose the connection are retried ``retries`` times, backing off up to
    ``max_backoff`` seconds; ``options`` go to redis-py's ``Redis.from_url``.
    """

    def __init__(
        self,
        name: str,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        stream: str | None = None,
        group: str = "busway",
        consumer: str | None = None,
        claim_idle: float = 30.0,
        batch_size: int = 100,
        retries: int = 10,
        max_backoff: float = 2.0,
        **options: Any,
    ) -> None:
        if claim_idle <= 0 or batch_size < 1:
            raise ValueError("RedisChannel needs claim_idle > 0 and batch_size >= 1")
        self.name = name
        self.url = url
        self.batch_size = batch_size
        consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._stream = Stream(stream or f"busway:{{{name}}}", group, consumer, claim_idle)
        self._link = Link(url, self._stream.create_group(), retries, max_backoff, options)
        self._deferred: weakref.WeakKeyDictionary[Batch, Deferred] = weakref.WeakKeyDictionary()
        self._clock: Callable[[], float] = time.time

    def __repr__(self) -> str:
        return f"RedisChannel({self.name!r}, stream={self.stream!r})"

    @property
    def stream(self) -> str:
        return self._stream.stream

    @property
    def consumer(self) -> str:
        return self._stream.consumer

    @property
    def client(self) -> redis.Redis:
        return self._link.client

    @property
    def aclient(self) -> redis.asyncio.Redis:
        """The asyncio client of the running event loop."""
        return self._link.aclient

    @functools.cached_property
    def _consumer(self) -> RedisConsumer:
        """What consuming needs, made at the first consume: after ``attach``."""
        return RedisConsumer(self.name, self._link, self._stream, self._clock, self.batch_size)

    def attach(self, context: ChannelContext) -> None:
        self._clock = context.clock
        self._stream.counting = context.max_crashes is not None

    def setup(self) -> None:
        self._link.setup()

    async def asetup(self) -> None:
        await self._link.asetup()

    # -- sending ---------------------------------------------------------------------------

    def send(self, envelope: Envelope) -> None:
        command = self._now_or_deferred(envelope)
        if command is not None:
            self._link.execute(command)

    async def asend(self, envelope: Envelope) -> None:
        command = self._now_or_deferred(envelope)
        if command is not None:
            await self._link.aexecute(command)

    def _now_or_deferred(self, envelope: Envelope) -> Command | None:
        """The command that sends ``envelope`` now; None if a batch defers it."""
        command = self._stream.send(envelope, self._clock())
        batch = current_batch.get()
        if batch is None:
            return command
        self._deferred_for(batch).add(command)
        return None

    def _deferred_for(self, batch: Batch) -> Deferred:
        """In a batch (a relay's, say), sends go out together, before its acknowledgement."""
        deferred = self._deferred.get(batch)
        if deferred is None:
            deferred = self._deferred[batch] = Deferred(self._link, batch)
            batch.before_ack.append(deferred.before_ack)
        return deferred

    # -- consuming -------------------------------------------------------------------------

    def consume(self, handle: Handle, max_messages: int, wait: float) -> int:
        return consuming.consume(self._consumer, handle, max_messages, wait)

    async def aconsume(self, handle: AsyncHandle, max_messages: int, wait: float) -> int:
        return await aconsuming.aconsume(self._consumer, handle, max_messages, wait)

    # -- inspection ------------------------------------------------------------------------

    def depth(self) -> int:
        """Messages not handled yet: not acknowledged (pending ones included), and delayed."""
        return int(self._link.execute(self._stream.depth()))

    def oldest_age(self) -> float | None:
        """Seconds since the oldest unhandled message became available."""
        return self._stream.age(self._link.execute(self._stream.heads()), self._clock())

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        if self._stream.reading:
            try:
                self._link.pipeline(self._stream.leave(), transaction=True)
            except redis.RedisError as error:
                self._left_pending(error)
        self._link.close()

    async def aclose(self) -> None:
        if self._stream.reading and self._link.loop_client() is not None:
            try:
                await self._link.apipeline(self._stream.leave(), transaction=True)
            except redis.RedisError as error:
                self._left_pending(error)
        await self._link.aclose()
        self.close()

    def _left_pending(self, error: Exception) -> None:
        log.warning(
            "%r could not give back the messages it holds (%s); other consumers claim them "
            "after claim_idle",
            self,
            error,
        )
