"""Setting up what an application uses the first time it uses it, once per process.

``Messaging(auto_setup=True)`` (the default) creates busway's SQL tables (its stores' and every
SQL channel's, all at once, so none is created inside a transaction that holds a lock) the
first time anything uses the database, and each other channel's queue or stream the first
time it is used. After that, each use costs one attribute check.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Collection, Mapping

from busway.channels.base import Channel

log = logging.getLogger("busway")


class Once:
    """One set-up step, run at its first use; a failed one runs again at the next use."""

    __slots__ = ("_asetup", "_lock", "_setup", "done")

    def __init__(
        self,
        setup: Callable[[], None],
        asetup: Callable[[], Awaitable[None]] | None = None,
        done: bool = False,
    ) -> None:
        self._setup = setup
        self._asetup = asetup
        self._lock = threading.Lock()
        self.done = done

    def __call__(self) -> None:
        if self.done:
            return
        with self._lock:
            if not self.done:
                self._setup()
                self.done = True

    def attempt(self) -> None:
        """Run it if it is due; if it fails, go on: what uses it next meets the same problem
        its own way (a relay keeps back what it could not send), and set-up runs again at the
        next use."""
        if self.done:
            return
        try:
            self()
        except Exception as error:
            _failed(error)

    async def aattempt(self) -> None:
        if self.done:
            return
        try:
            await self.arun()
        except Exception as error:
            _failed(error)

    async def arun(self) -> None:
        if self.done:
            return
        if self._asetup is None:
            await asyncio.to_thread(self)  # the lock keeps racing tasks to one set-up
            return
        await self._asetup()  # tasks racing here each declare: declaring is idempotent
        self.done = True


def _nothing() -> None:
    pass


def _failed(error: Exception) -> None:
    log.warning(
        "set-up at first use failed (%s: %s); tried again at the next use",
        type(error).__name__,
        error,
    )


class Preparation:
    """The set-up steps of one application, by what uses them."""

    def __init__(
        self,
        enabled: bool,
        sql: Callable[[], None] | None = None,
        sql_channels: Collection[str] = (),
        channels: Mapping[str, Channel] | None = None,
    ) -> None:
        self.enabled = enabled
        self.sql = Once(
            sql if enabled and sql is not None else _nothing, done=not enabled or sql is None
        )
        self._channels: dict[str, Once] = {}
        for name, channel in (channels or {}).items():
            if name in sql_channels:
                self._channels[name] = self.sql
            elif enabled:
                self._channels[name] = Once(channel.setup, channel.asetup)
        self._steps = [*([] if self.sql.done else [self.sql]), *self._channels.values()]

    def again(self) -> bool:
        """Set up again at the next use (what was made is gone); False if that is off."""
        if self.enabled:
            self._mark(done=False)
        return self.enabled

    def done(self) -> None:
        """Everything was set up (``messaging.setup()``): no first use needs to."""
        self._mark(done=True)

    def _mark(self, done: bool) -> None:
        for once in self._steps:
            once.done = done

    def dispatching(self) -> None:
        """Before a message is sent or handled, which may open a transaction: on SQLite that
        holds the write lock, and a set-up inside it would wait for it."""
        if not self.sql.done:
            self.sql.attempt()

    async def adispatching(self) -> None:
        if not self.sql.done:
            await self.sql.aattempt()

    def sending(self, channel: str) -> None:
        once = self._channels.get(channel)
        if once is not None and not once.done:
            once.attempt()

    async def asending(self, channel: str) -> None:
        once = self._channels.get(channel)
        if once is not None and not once.done:
            await once.aattempt()

    def consuming(self, channel: str) -> None:
        """Consuming needs the channel and the stores (dead letters, inbox); a failure is the
        worker's to handle, as any failing channel's."""
        self.sql()
        once = self._channels.get(channel)
        if once is not None:
            once()

    async def aconsuming(self, channel: str) -> None:
        await self.sql.arun()
        once = self._channels.get(channel)
        if once is not None:
            await once.arun()
