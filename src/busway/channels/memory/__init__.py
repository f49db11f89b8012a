"""A channel in this process's memory, for tests and single-process applications.

Messages are serialized as on a real transport, so a payload or header that could not
cross a network fails here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import threading
from collections import deque
from typing import Any

import msgspec

from busway.channels.base import (
    AsyncHandle,
    Channel,
    ChannelContext,
    Delivery,
    Envelope,
    Handle,
)
from busway.channels.memory._async import consuming as aconsuming
from busway.channels.memory._sync import consuming
from busway.errors import ConversionError

_Stored = tuple[bytes, bytes]  # (headers as JSON, body)


class InMemoryChannel(Channel):
    """FIFO in memory; honours delivery delays against the messaging clock."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._ready: deque[_Stored] = deque()
        self._delayed: list[tuple[float, int, _Stored]] = []
        self._sequence = itertools.count()
        self._condition = threading.Condition()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._clock: Any = None

    def __repr__(self) -> str:
        return f"InMemoryChannel({self.name!r})"

    def attach(self, context: ChannelContext) -> None:
        self._clock = context.clock

    def send(self, envelope: Envelope) -> None:
        try:
            stored = (msgspec.json.encode(envelope.headers), envelope.body)
        except TypeError as error:
            raise ConversionError(
                f"a header of a message for channel {self.name!r} is not JSON: {error}; "
                "header values must be str, int, float, bool or None"
            ) from error
        with self._condition:
            deliver_at = envelope.deliver_at
            if deliver_at is not None and deliver_at > self._now():
                heapq.heappush(self._delayed, (deliver_at, next(self._sequence), stored))
            else:
                self._ready.append(stored)
            self._condition.notify()
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            loop.call_soon_threadsafe(_wake, future)

    async def asend(self, envelope: Envelope) -> None:
        self.send(envelope)

    def consume(self, handle: Handle, max_messages: int, wait: float) -> int:
        return consuming.consume(self, handle, max_messages, wait)

    async def aconsume(self, handle: AsyncHandle, max_messages: int, wait: float) -> int:
        return await aconsuming.aconsume(self, handle, max_messages, wait)

    def taken(self, wait: float) -> _Stored | None:
        """The next message, waiting at most ``wait`` seconds for one; None if none came."""
        return self._take(wait)

    async def ataken(self, wait: float) -> _Stored | None:
        stored = self._take(0.0)
        if stored is None and wait > 0:
            await self._await_send(wait)
            stored = self._take(0.0)
        return stored

    def depth(self) -> int:
        with self._condition:
            return len(self._ready) + len(self._delayed)

    def ready_count(self) -> int:
        """Messages deliverable now (delays that have passed included)."""
        with self._condition:
            self._release_due()
            return len(self._ready)

    def _now(self) -> float:
        clock = self._clock
        if clock is None:
            raise RuntimeError(
                f"channel {self.name!r} is not attached; pass it in Messaging(channels=[...])"
            )
        return float(clock())

    def _release_due(self) -> None:
        if self._delayed:
            now = self._now()
            while self._delayed and self._delayed[0][0] <= now:
                self._ready.append(heapq.heappop(self._delayed)[2])

    def _take(self, wait: float) -> _Stored | None:
        with self._condition:
            self._release_due()
            if not self._ready and wait > 0:
                self._condition.wait(wait)
                self._release_due()
            return self._ready.popleft() if self._ready else None

    def interrupt(self) -> None:
        with self._condition:
            self._condition.notify_all()

    def give_back(self, stored: _Stored) -> None:
        """Put ``stored`` back at the head, for the next consumer."""
        with self._condition:
            self._ready.appendleft(stored)

    async def _await_send(self, wait: float) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._condition:
            self._waiters.append((loop, future))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(future, wait)

    def delivery(self, stored: _Stored) -> Delivery:
        headers, body = stored
        return Delivery(Envelope(body, msgspec.json.decode(headers)), self.name)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
