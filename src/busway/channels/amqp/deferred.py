"""A batch's sends, deferred until before its acknowledgement: publishes whose confirms are
in flight meanwhile, awaited together then."""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Awaitable, Hashable
from typing import TYPE_CHECKING

from busway.channels.amqp.wire import _Outgoing
from busway.channels.base import Batch

if TYPE_CHECKING:
    from busway.channels.amqp.link import _Link


class _Deferred:
    """One batch's publishes on one link, their confirms in flight until ``settle``."""

    def __init__(self, link: _Link, batch: Batch) -> None:
        self.link = link
        self._batch = weakref.ref(batch)  # the link's map of batches holds them weakly
        self._lock = threading.Lock()
        self._queued: list[tuple[_Outgoing, Hashable | None]] = []
        self._scheduled = False
        self._in_flight: list[tuple[_Outgoing, Hashable | None, asyncio.Task[None]]] = []
        self._deadline: float | None = None

    @property
    def batch(self) -> Batch:
        batch = self._batch()
        assert batch is not None, "a batch outlives its before_ack callbacks"
        return batch

    def add(self, message: _Outgoing) -> None:
        """Start publishing ``message`` without waiting for its confirm: from any thread.

        The message is tagged with the batch's message in hand, to keep back only that one
        if it is not confirmed.
        """
        with self._lock:
            self._queued.append((message, self.batch.current))
            if self._scheduled:
                return
            self._scheduled = True
        self.link.call_soon(self._start)

    def _start(self) -> None:
        with self._lock:
            queued, self._queued = self._queued, []
            self._scheduled = False
        if not queued:
            return
        loop = asyncio.get_running_loop()
        self._deadline = deadline = loop.time() + self.link.owner.publish_timeout
        for message, source in queued:
            task = loop.create_task(self.link.publish_once(message, deadline))
            self._in_flight.append((message, source, task))

    async def settle(self) -> None:
        """Wait for every confirm and publish again what a lost connection took; raise
        ``Unsent`` (or the error) for the messages refused or never confirmed."""
        self._start()
        in_flight, self._in_flight = self._in_flight, []
        results = await asyncio.gather(*(task for *_, task in in_flight), return_exceptions=True)
        sources = {id(message): source for message, source, _ in in_flight}
        failures = await self.link.publish_all(
            [message for message, *_ in in_flight], self._deadline, results
        )
        if failures:
            raise self.batch.unsent([(sources[id(message)], error) for message, error in failures])

    def before_ack(self) -> Awaitable[None] | None:
        """The batch's ``before_ack`` callback: waits here in sync code, else returns an
        awaitable for the caller's loop."""
        loop = self.link.loop
        assert loop is not None
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run_coroutine_threadsafe(self.settle(), loop).result()
            return None
        if running is loop:
            return self.settle()
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.settle(), loop))
