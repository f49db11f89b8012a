"""Handler time limits: how long one handling by a worker may take before it counts as failed.

The most specific limit wins: the handler's own (``@handler_timeout`` on it), then the one of
the bus the message was sent through (``@handler_timeout`` on the bus class, carried in the
message's ``busway.timeout`` header), then the worker's ``handler_timeout``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

T = TypeVar("T")

TIMEOUT_MARK = "__busway_timeout__"


def handler_timeout(seconds: float | timedelta) -> Callable[[T], T]:
    """Give a handler, or a bus class, a time limit for each handling by a worker.

    Past it, an ``async def`` handler is cancelled and a ``def`` handler is abandoned (see
    docs/concepts.md, "Time limits"); the handling fails with ``HandlerTimeout``, retried
    and then dead-lettered like any other failure.
    """
    limit = seconds_of(seconds)

    def mark(target: T) -> T:
        setattr(target, TIMEOUT_MARK, limit)
        return target

    return mark


def seconds_of(duration: float | timedelta) -> float:
    """A time limit in seconds, checked: a positive, finite number."""
    limit = duration.total_seconds() if isinstance(duration, timedelta) else duration
    if isinstance(limit, bool) or not isinstance(limit, int | float):
        raise TypeError(f"a handler time limit is a number of seconds, not {duration!r}")
    if not (limit > 0 and math.isfinite(limit)):
        raise ValueError(f"a handler time limit must be a positive number of seconds, not {limit}")
    return float(limit)


def marked_timeout(target: object) -> float | None:
    limit = getattr(target, TIMEOUT_MARK, None)
    return limit if isinstance(limit, float) else None


def timeout_from_header(value: object) -> float | None:
    """The limit a message carries, or None if the header is missing or unreadable."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if value > 0 and math.isfinite(value) else None
