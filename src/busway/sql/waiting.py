"""How a ``SqlChannel`` consumer that found nothing waits: until the next delayed message is
due or one is sent, at most as long as the worker allows. On PostgreSQL it listens for the
notifications of the table's trigger; elsewhere it polls, and a send in this process ends
the sync waits early. The wait itself is ``busway.sql._async.idling``'s; here is what it
holds and decides."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from busway.sql._async.listening import AsyncListener
from busway.sql._sync.listening import Listener
from busway.sql.database import Database

UNKNOWN = object()
next_due: ContextVar[Any] = ContextVar("busway_sql_next_due", default=UNKNOWN)
"""What the last empty claim in this context found: its channel, and that channel's earliest
``available_at``."""

BUSY_PAUSE = 0.05
"""How long a consumer first waits when messages are due and it could take none: other
workers have them, or the earlier messages of their keys (``SqlConsumer.busy_pause``)."""


class Waiting:
    """The waits of the channel ``channel``: its PostgreSQL listeners, sync and asyncio, and
    the wake-up of the waits in this process, which look again every ``poll_interval``
    seconds."""

    def __init__(self, channel: str, poll_interval: float) -> None:
        self.channel = channel
        self.poll_interval = poll_interval
        self.listener = Listener(channel)
        self.alistener = AsyncListener(channel)
        self._wakeup = threading.Condition()
        self._woken = False

    def pause(self, seconds: float) -> None:
        """Wait ``seconds``, or until ``wake_local``: not at all if it was called since the
        last pause, while the consumer claimed (a stop, or a send, would be lost)."""
        with self._wakeup:
            if not self._woken:
                self._wakeup.wait(seconds)
            self._woken = False

    async def apause(self, seconds: float) -> None:
        """``pause`` on an event loop, for ``seconds``."""
        await asyncio.sleep(seconds)

    def wake_local(self) -> None:
        """End the sync waits in this process that poll; a PostgreSQL listener's ends at its
        timeout."""
        with self._wakeup:
            self._woken = True
            self._wakeup.notify_all()

    def close(self) -> None:
        self.listener.close()

    async def aclose(self) -> None:
        await self.alistener.aclose()


def last_found(channel: str) -> Any:
    """The next due time the last empty claim of ``channel`` in this context found, or
    ``UNKNOWN``; forgotten once asked for."""
    found = next_due.get()
    next_due.set(UNKNOWN)
    return found[1] if found is not UNKNOWN and found[0] == channel else UNKNOWN


def due_at(database: Database, due: Any) -> Any:
    """The next due time, asked now with the query ``due``."""
    with database.worker_engine.connect() as connection:
        return connection.execute(due).scalar()


def seconds_until(found: Any, limit: float, clock: Callable[[], float]) -> float:
    """How long until the next delayed message is due (``found``), at most ``limit``."""
    if found is None:
        return limit
    return max(0.0, min(limit, float(found) / 1000 - clock()))
