"""The channels page: each channel's depth, the age of its oldest message, and how fast its
depth changes, read as ``busway channels`` reads them."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from busway.messaging import Messaging

WINDOW = 60.0
"""How far back the change of a depth is measured, in seconds."""
SHORTEST_SPAN = 1.0
"""Depths read closer together than this tell no rate yet."""


@dataclass(frozen=True, slots=True)
class ChannelRow:
    name: str
    kind: str
    depth: int | None
    oldest_age: float | None
    rate: float | None
    """Messages per second the depth grew (negative: shrank) over the last ``WINDOW``."""
    dead_letters: int
    problem: str | None = None
    """Why the channel could not be read, if it could not."""


class DepthHistory:
    """The depths the dashboard read lately, kept in its memory to tell a rate from."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._samples: dict[str, deque[tuple[float, int]]] = {}
        self._lock = threading.Lock()

    def rate(self, channel: str, depth: int) -> float | None:
        """Note ``depth`` now; the change per second since the oldest depth in the window."""
        now = self._clock()
        with self._lock:
            samples = self._samples.setdefault(channel, deque())
            samples.append((now, depth))
            while len(samples) > 2 and now - samples[1][0] >= WINDOW:
                samples.popleft()
            since, before = samples[0]
        span = now - since
        return (depth - before) / span if span >= SHORTEST_SPAN else None


def channel_rows(messaging: Messaging, history: DepthHistory) -> list[ChannelRow]:
    letters = Counter(letter.channel for letter in messaging.dead_letters.list())
    rows = []
    for name, channel in messaging.channels.items():
        kind = type(channel).__name__
        try:
            messaging.runtime.preparation.sending(name)
            depth = channel.depth()
            age = channel.oldest_age()
        except Exception as error:  # one unreachable broker must not hide the others
            rows.append(ChannelRow(name, kind, None, None, None, letters[name], _problem(error)))
            continue
        rate = None if depth is None else history.rate(name, depth)
        rows.append(ChannelRow(name, kind, depth, age, rate, letters[name]))
    return rows


def _problem(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
