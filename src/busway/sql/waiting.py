"""How a ``SqlChannel`` consumer that found nothing waits: until the next delayed message is
due or one is sent, at most as long as the worker allows. On PostgreSQL it listens for the
notifications of the table's trigger; elsewhere it polls, and a send in this process ends
the wait early."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from busway.sql._async.listening import AsyncListener
from busway.sql._sync.listening import Listener
from busway.sql.database import Database

_UNKNOWN = object()
next_due: ContextVar[Any] = ContextVar("busway_sql_next_due", default=_UNKNOWN)
"""What the last empty claim in this context found: its channel, and that channel's earliest
``available_at``."""

_BUSY_PAUSE = 0.05


class Waiting:
    """The waits of the channel ``channel``: its PostgreSQL listeners, sync and asyncio, and
    the wake-up of the waits in this process."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self._wakeup = threading.Condition()
        self._listener = Listener(channel)
        self._alistener = AsyncListener(channel)

    def wait(
        self,
        wait: float,
        *,
        database: Database,
        due: Any,
        clock: Callable[[], float],
        poll_interval: float,
    ) -> None:
        """Wait at most ``wait`` seconds; ``due`` is the query of the next due time."""
        # A message due now but not taken is locked by another worker: wait a moment for it.
        timeout = _seconds_until_due(wait, self.channel, database, due, clock)
        timeout = timeout or min(wait, _BUSY_PAUSE)
        if database.backend == "postgresql":
            self._listener.listen(database, timeout)
            return
        with self._wakeup:
            self._wakeup.wait(min(timeout, poll_interval))

    async def await_(
        self,
        wait: float,
        *,
        database: Database,
        due: Any,
        clock: Callable[[], float],
        poll_interval: float,
    ) -> None:
        """``wait`` on an event loop."""
        if _found(self.channel) is _UNKNOWN:
            timeout = await asyncio.to_thread(
                _seconds_until_due, wait, self.channel, database, due, clock
            )
        else:
            timeout = _seconds_until_due(wait, self.channel, database, due, clock)
        timeout = timeout or min(wait, _BUSY_PAUSE)
        if database.backend == "postgresql":
            await self._alistener.alisten(database, timeout)
        else:
            await asyncio.sleep(min(timeout, poll_interval))

    def wake_local(self) -> None:
        """End the waits in this process that poll; a PostgreSQL listener's ends at its
        timeout."""
        with self._wakeup:
            self._wakeup.notify_all()

    def close(self) -> None:
        self._listener.close()

    async def aclose(self) -> None:
        await self._alistener.aclose()


def _found(channel: str) -> Any:
    """The next due time the last empty claim of ``channel`` in this context found."""
    found = next_due.get()
    return found[1] if found is not _UNKNOWN and found[0] == channel else _UNKNOWN


def _seconds_until_due(
    limit: float, channel: str, database: Database, due: Any, clock: Callable[[], float]
) -> float:
    """How long until the next delayed message is due, at most ``limit``: as an empty claim
    of ``channel`` just found it, or asked now with the query ``due``."""
    found = _found(channel)
    next_due.set(_UNKNOWN)
    if found is _UNKNOWN:
        with database.worker_engine.connect() as connection:
            found = connection.execute(due).scalar()
    if found is None:
        return limit
    return max(0.0, min(limit, float(found) / 1000 - clock()))
