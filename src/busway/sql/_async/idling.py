"""A ``SqlChannel`` consumer that found nothing, waiting (``busway.sql.waiting``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from busway.sql.database import Database
from busway.sql.waiting import BUSY_PAUSE, UNKNOWN, Waiting, due_at, last_found, seconds_until


async def await_idle(
    waiting: Waiting, database: Database, due: Any, clock: Callable[[], float], wait: float
) -> None:
    """Wait at most ``wait`` seconds; ``due`` is the query of the next due time. The channel
    binds all but ``wait`` once (``SqlConsumer.await_idle``)."""
    found = last_found(waiting.channel)
    if found is UNKNOWN:
        found = await asyncio.to_thread(due_at, database, due)
    # A message due now but not taken is locked by another worker: wait a moment for it.
    timeout = seconds_until(found, wait, clock) or min(wait, BUSY_PAUSE)
    if database.backend == "postgresql":
        await waiting.alistener.alisten(database, timeout)
    else:
        await waiting.apause(min(timeout, waiting.poll_interval))
