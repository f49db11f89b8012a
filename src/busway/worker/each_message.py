"""The optional log line per handled message, on the ``busway.messages`` logger at DEBUG.

Whether it is on is read once, when a run starts (``busway run --log-each``, or the
``busway.messages`` logger at DEBUG): a run without it pays nothing per message.
"""

from __future__ import annotations

import logging

from busway._internal.consuming import Outcome
from busway.channels.base import Delivery
from busway.message import ID, TYPE

log = logging.getLogger("busway.messages")


def wanted() -> bool:
    return log.isEnabledFor(logging.DEBUG)


def note(delivery: Delivery, outcome: Outcome, seconds: float) -> None:
    """One line saying what became of ``delivery``, and how long it took."""
    headers = delivery.envelope.headers
    if outcome.ok:
        what = "handled"
    elif outcome.dead_lettered:
        what = "failed, dead-lettered"
    elif outcome.retried:
        what = "failed, retried later"
    else:
        what = "failed"
    log.debug(
        "message %s (%s) on %s: %s in %.1fms",
        headers.get(ID),
        headers.get(TYPE),
        delivery.channel,
        what,
        seconds * 1000,
        extra={
            "channel": delivery.channel,
            "message_id": headers.get(ID),
            "message_type": headers.get(TYPE),
            "outcome": "ok" if outcome.ok else "failed",
            "retried": outcome.retried,
            "dead_lettered": outcome.dead_lettered,
            "duration_ms": round(seconds * 1000, 3),
        },
    )
