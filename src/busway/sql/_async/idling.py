"""A ``SqlChannel`` consumer that found nothing, waiting (``busway.sql.waiting``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from busway.sql.database import Database
from busway.sql.waiting import BUSY_PAUSE, UNKNOWN, Waiting, due_at, last_found, seconds_until


async def await_idle(
    waiting: Waiting,
    database: Database,
    due: Any,
    clock: Callable[[], float],
    wait: float,
    busy_pause: float = BUSY_PAUSE,
) -> None:
    """Wait at most ``wait`` seconds; ``due`` is the query of the next due time. The channel
    binds all but ``wait`` and ``busy_pause`` once (``SqlConsumer.await_idle``): how long to
    wait for messages due now but not taken."""
    found = last_found(waiting.channel)
    if found is UNKNOWN:
        found = await asyncio.to_thread(due_at, database, due)
    # A message due now but not taken is in another worker's hands, or waits behind one of
    # its key that is: wait a moment for it.
    timeout = seconds_until(found, wait, clock) or min(wait, busy_pause)
    if database.backend == "postgresql":
        await waiting.alistener.alisten(database, timeout)
    else:
        await waiting.apause(min(timeout, waiting.poll_interval))
