"""A claimed row of ``busway_messages`` as a delivery, whatever the row holds."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row

from busway.channels.base import Delivery
from busway.channels.reading import read
from busway.message import ORDERING_KEY, POSITION


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
    if row.ordering_key is not None:
        # Its place among the messages of its key, which a retry or a replay of it keeps;
        # and, beside headers that cannot be read, its key: its dead letter holds it back.
        headers = envelope.headers
        assert isinstance(headers, dict)
        headers[POSITION] = f"{channel}:{row.position}"
        if unreadable is not None:
            headers[ORDERING_KEY] = row.ordering_key
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


def place_on(channel: str, position: object) -> int | None:
    """The place a message keeps among those of its key on ``channel`` (the ``POSITION``
    header a delivery of it there was given), or None: it takes a new one."""
    if not isinstance(position, str):
        return None
    name, _, place = position.rpartition(":")
    if name != channel or not place.isdigit():
        return None
    return int(place)
