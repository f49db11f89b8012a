# Generated from src/busway/_internal/_async/receiving.py by tools/unasync.py: do not edit.
# Change the asyncio source, then run `make generate`.
"""What a worker does with one delivery: run it through the chain (``busway._internal._async
.links``): dropped once its time to live ended, forwarded, dead-lettered, or handled by each of
its handlers' chains, with their retries and dead letters."""

from __future__ import annotations

from busway._internal.consuming import Consumer, Outcome
from busway.channels.base import Delivery


def receive(
    consumer: Consumer, delivery: Delivery, default_timeout: float | None = None
) -> Outcome:
    """Handle one delivery; what became of it. ``default_timeout`` is the time limit of
    handlers without one of their own or their bus's."""
    instruments = consumer.runtime.instruments
    if instruments:
        with instruments.receiving(delivery):
            return consumer.receiving.receive(delivery, default_timeout)
    return consumer.receiving.receive(delivery, default_timeout)
