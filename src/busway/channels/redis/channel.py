"""``RedisChannel``: messages in a Redis stream, read through a consumer group."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio

from busway.channels.base import (
    AsyncHandle,
    Channel,
    ChannelContext,
    Envelope,
    Handle,
    MessageReturned,
    current_batch,
)
from busway.channels.redis.deferred import Deferred
from busway.channels.redis.hand import Hand
from busway.channels.redis.link import Link
from busway.channels.redis.stream import Entry, Stream

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
        self._deferred = Deferred(self._link)
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

    def attach(self, context: ChannelContext) -> None:
        self._clock = context.clock
        self._stream.counting = context.max_crashes is not None

    def setup(self) -> None:
        self._link.setup()

    async def asetup(self) -> None:
        await self._link.asetup()

    # -- sending ---------------------------------------------------------------------------

    def send(self, envelope: Envelope) -> None:
        command = self._stream.send(envelope, self._clock())
        batch = current_batch.get()
        if batch is None:
            self._link.execute(command)
        else:
            self._deferred.add(batch, command)

    async def asend(self, envelope: Envelope) -> None:
        command = self._stream.send(envelope, self._clock())
        batch = current_batch.get()
        if batch is None:
            await self._link.aexecute(command)
        else:
            self._deferred.add(batch, command)

    # -- consuming -------------------------------------------------------------------------

    def consume(self, handle: Handle, max_messages: int, wait: float) -> int:
        limit = min(max_messages, self.batch_size)
        if limit < 1:
            return 0
        entries = self._stream.take_held(limit)
        if entries:
            self._link.call(self._stream.touch(entries))  # held a while: not for others to claim
        else:
            entries = self._fetch(limit, wait)
        return self._hand_out(handle, entries) if entries else 0

    def _fetch(self, limit: int, wait: float) -> list[Entry]:
        call, stream = self._link.call, self._stream
        deadline = time.monotonic() + wait
        while True:
            if stream.claim_due():
                claimed = stream.claimed(*call(stream.claim(limit)))
                if claimed:
                    return claimed
            now = self._clock()
            entries, pause = stream.fetched(call(*stream.fetch(now, limit)), now)
            remaining = deadline - time.monotonic()
            if entries or remaining <= 0:
                return entries
            (reply,) = call(stream.read(limit, min(remaining, pause)))
            entries = stream.read_reply(reply)
            if entries or time.monotonic() >= deadline:
                return entries

    def _hand_out(self, handle: Handle, entries: list[Entry]) -> int:
        hand = Hand(self.name, self._stream, entries)
        token = current_batch.set(hand.batch)
        try:
            for delivery in hand:
                if hand.slow():  # keep the batch here until acknowledged
                    self._link.call(self._stream.touch(entries))
                try:
                    handle(delivery)
                except MessageReturned:
                    break
                except BaseException as error:
                    hand.failure = error
                    break
                hand.handled += 1
            hand.before_ack()
        except BaseException:
            hand.give_back()
            raise
        finally:
            current_batch.reset(token)
        done = hand.settle()
        if done:
            self._link.execute(self._stream.acknowledge(done))
        if hand.kept and self._stream.counting:
            self._link.call(*self._stream.keep_count(hand.kept))
        hand.raise_failure()
        return len(done)

    async def aconsume(self, handle: AsyncHandle, max_messages: int, wait: float) -> int:
        limit = min(max_messages, self.batch_size)
        if limit < 1:
            return 0
        entries = self._stream.take_held(limit)
        if entries:
            await self._link.acall(self._stream.touch(entries))
        else:
            entries = await self._afetch(limit, wait)
        return await self._ahand_out(handle, entries) if entries else 0

    async def _afetch(self, limit: int, wait: float) -> list[Entry]:
        call, stream = self._link.acall, self._stream
        deadline = time.monotonic() + wait
        while True:
            if stream.claim_due():
                claimed = stream.claimed(*await call(stream.claim(limit)))
                if claimed:
                    return claimed
            now = self._clock()
            entries, pause = stream.fetched(await call(*stream.fetch(now, limit)), now)
            remaining = deadline - time.monotonic()
            if entries or remaining <= 0:
                return entries
            (reply,) = await call(stream.read(limit, min(remaining, pause)))
            entries = stream.read_reply(reply)
            if entries or time.monotonic() >= deadline:
                return entries

    async def _ahand_out(self, handle: AsyncHandle, entries: list[Entry]) -> int:
        hand = Hand(self.name, self._stream, entries)
        token = current_batch.set(hand.batch)
        try:
            for delivery in hand:
                if hand.slow():
                    await self._link.acall(self._stream.touch(entries))
                try:
                    await handle(delivery)
                except MessageReturned:
                    break
                except BaseException as error:
                    hand.failure = error
                    break
                hand.handled += 1
            await hand.abefore_ack()
        except BaseException:
            hand.give_back()
            raise
        finally:
            current_batch.reset(token)
        done = hand.settle()
        if done:
            await self._link.aexecute(self._stream.acknowledge(done))
        if hand.kept and self._stream.counting:
            await self._link.acall(*self._stream.keep_count(hand.kept))
        hand.raise_failure()
        return len(done)

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
