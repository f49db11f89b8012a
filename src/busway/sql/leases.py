"""``SqlChannel``'s ``lease`` mode: a batch is claimed and marked taken for
``visibility_timeout`` seconds in a transaction committed at once, and handed out outside
any transaction; a claim left by a dead worker becomes available again when its lease runs
out. A lease's count, ``deliveries``, given back with a released lease, is the count of the
deaths of workers with the message in hand: a message leased before is leased alone.

The I/O is ``SqlChannel``'s (``busway.sql._async.consuming``); here are its decisions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row

from busway.channels.base import Delivery
from busway.sql.crashes import in_turn

if TYPE_CHECKING:
    from busway.sql.consumer import SqlConsumer


def to_lease(rows: Sequence[Row[Any]], guarded: bool) -> list[Row[Any]]:
    """The rows to lease now: with the crash-loop guard, a row leased before alone."""
    return in_turn(rows, _deaths) if guarded else list(rows)


def _deaths(row: Row[Any]) -> int:
    return int(row.deliveries)


def leased(consumer: SqlConsumer, row: Row[Any]) -> Delivery:
    """The delivery of the leased ``row``."""
    return consumer.delivery(row, None, crashes=row.deliveries if consumer.guarded else 0)
