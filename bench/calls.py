"""Function calls per message, counted by cProfile: a figure that does not move with the
machine's load, so that a change to the hot path can be compared before and after.

- ``CommandBus.send`` to a ``def`` handler, in process, against calling the handler;
- a SQLite SqlChannel backlog drained by one worker (``messaging.run``, as the ``sql`` drain
  bench does), with a no-op handler, against the raw claim + decode + call + delete loop.

cProfile counts every call it sees, to Python functions and to built-in ones alike; the total
is divided by the number of messages, so what a run does once (starting the worker, the last
empty poll) adds a fraction of a call to each message.
"""

from __future__ import annotations

import cProfile
import gc
import pstats
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench import Result
from bench.core import Ping, handle
from bench.sql import _drain_busway, _drain_raw, _fill, _messaging
from busway import Messaging

SENDS = 2_000
DRAIN = 2_000
UNIT = "calls/msg"


def benchmarks() -> list[Result]:
    return [send(), drain()]


def calls(action: Callable[[], object]) -> int:
    """How many calls cProfile counts while ``action()`` runs, the garbage collector paused
    (a collection would call finalizers at moments that vary)."""
    profile = cProfile.Profile()
    collecting = gc.isenabled()
    gc.disable()
    try:
        profile.runcall(action)
    finally:
        if collecting:
            gc.enable()
    return pstats.Stats(profile).total_calls  # type: ignore[attr-defined, no-any-return]


def send() -> Result:
    bus = Messaging(handlers=[handle]).command_bus
    ping = Ping(0)

    def through_bus() -> None:
        for _ in range(SENDS):
            bus.send(ping)

    def direct() -> None:
        for _ in range(SENDS):
            handle(ping)

    through_bus()  # the first sends build what the later ones reuse
    return Result(
        "calls: CommandBus.send, one def handler",
        calls(through_bus) / SENDS,
        UNIT,
        "direct call",
        calls(direct) / SENDS,
    )


def drain() -> Result:
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'bench.db'}"
        messaging = _messaging(url)
        try:
            _fill(messaging, DRAIN)
            _drain_busway(messaging, DRAIN)  # warm up, as for the sends
            _fill(messaging, DRAIN)
            busway = calls(lambda: _drain_busway(messaging, DRAIN))
            _fill(messaging, DRAIN)
            raw = calls(lambda: _drain_raw(url, DRAIN))
        finally:
            messaging.close()
    return Result(
        f"calls: SQLite drain of {DRAIN:,} messages, one worker, no-op handler",
        busway / DRAIN,
        UNIT,
        "raw claim 100 + decode + call + delete loop",
        raw / DRAIN,
    )
