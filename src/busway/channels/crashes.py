"""The crash-loop guard's rule for a batch: a message in hand at a death is handed out alone."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

R = TypeVar("R")


def in_turn(items: Sequence[R], crashes: Callable[[R], int]) -> list[R]:
    """What to hand out now: a suspect (``crashes`` > 0) alone, or what comes before the first.

    A next death then counts against the suspect alone, not against its batch-mates.
    """
    for index, item in enumerate(items):
        if crashes(item):
            return list(items[:index]) if index else [item]
    return list(items)
