"""The workers page: the live workers by their heartbeats (``Messaging.workers()``)."""

from __future__ import annotations

from busway.liveness import WorkerRecord
from busway.messaging import Messaging


def worker_rows(messaging: Messaging) -> list[WorkerRecord]:
    """The workers that recorded a heartbeat, the silent ones among them."""
    return messaging.workers()
