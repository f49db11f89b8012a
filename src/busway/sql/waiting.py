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

from busway.sql.database import Database
from busway.sql.statements import NOTIFY_CHANNEL

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
        self._listener: Any = None
        self._alistener: Any = None

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
            self._listen(database, timeout)
            return
        with self._wakeup:
            self._wakeup.wait(min(timeout, poll_interval))

    def _listen(self, database: Database, timeout: float) -> None:
        import psycopg

        if self._listener is None or self._listener.closed:
            url = database.url.set(drivername="postgresql")
            self._listener = psycopg.connect(
                url.render_as_string(hide_password=False), autocommit=True
            )
            self._listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
            return  # a message may have committed before LISTEN: look again at once
        for notify in self._listener.notifies(timeout=timeout):
            if notify.payload == self.channel:
                break

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
            await self._alisten(database, timeout)
        else:
            await asyncio.sleep(min(timeout, poll_interval))

    async def _alisten(self, database: Database, seconds: float) -> None:
        import psycopg

        if self._alistener is None or self._alistener.closed:
            url = database.url.set(drivername="postgresql")
            self._alistener = await psycopg.AsyncConnection.connect(
                url.render_as_string(hide_password=False), autocommit=True
            )
            await self._alistener.execute(f"LISTEN {NOTIFY_CHANNEL}")
            return
        async for notify in self._alistener.notifies(timeout=seconds):
            if notify.payload == self.channel:
                break

    def wake_local(self) -> None:
        """End the waits in this process that poll; a PostgreSQL listener's ends at its
        timeout."""
        with self._wakeup:
            self._wakeup.notify_all()

    def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    async def aclose(self) -> None:
        listener, self._alistener = self._alistener, None
        if listener is not None:
            await listener.close()


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
