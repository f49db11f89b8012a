"""Work for a connection's event loop, handed over from other threads in order."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("busway.nats")


class Queued:
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


def running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
