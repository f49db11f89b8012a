"""A claimed row of ``busway_messages`` as a delivery, whatever the row holds."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row

from busway.channels.base import Delivery
from busway.channels.reading import read


def delivery_of(
    row: Row[Any],
    channel: str,
    connection: Any,
    isolated: bool,
    *,
    repeated: bool = False,
    known_failure: BaseException | None = None,
    crashes: int = 0,
) -> Delivery:
    """The row's message, or, when its headers cannot be read, an ``Unreadable`` delivery that
    the core moves to the dead letter store as the row holds it."""
    envelope, unreadable = read(bytes(row.body), row.headers)
    deliveries = row.deliveries
    return Delivery(
        envelope,
        channel,
        transaction=connection,
        redelivered=isinstance(deliveries, int) and deliveries > 0,
        isolated=isolated,
        repeated=repeated,
        known_failure=known_failure,
        crashes=crashes,
        unreadable=unreadable,
    )
