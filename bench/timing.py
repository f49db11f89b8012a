"""Timing a loop against its baseline, timeit-style, with the repetitions interleaved; and
measuring latency, from send to handler, at a fixed rate."""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench import Result

Loop = Callable[[int], None]
"""Runs the measured operation ``n`` times."""

REPEAT = 7
TARGET_SECONDS = 0.2
QUICK = os.environ.get("BENCH_QUICK") == "1"


def compare(subject: Loop, baseline: Loop, *, repeat: int = REPEAT) -> tuple[float, float]:
    """Best seconds per operation of ``subject`` and of ``baseline``.

    Each loop is first calibrated to run about ``TARGET_SECONDS`` per repetition (which also
    warms it up); then the repetitions alternate, so drift in the machine's speed hits both
    alike. The best repetition is the one least disturbed by other work on the machine.
    """
    if QUICK:
        repeat = 2
    target = TARGET_SECONDS / 10 if QUICK else TARGET_SECONDS
    subject_n = calibrate(subject, target)
    baseline_n = calibrate(baseline, target)
    best_subject = best_baseline = float("inf")
    for _ in range(repeat):
        best_subject = min(best_subject, timed(subject, subject_n) / subject_n)
        best_baseline = min(best_baseline, timed(baseline, baseline_n) / baseline_n)
    return best_subject, best_baseline


def calibrate(loop: Loop, target: float) -> int:
    """The smallest count of 1, 2, 5, 10, 20, 50, ... whose run lasts ``target`` seconds."""
    scale = 1
    while True:
        for step in (1, 2, 5):
            n = step * scale
            if timed(loop, n) >= target:
                return n
        scale *= 10


def timed(loop: Loop, n: int) -> float:
    """Seconds ``loop(n)`` takes, with the garbage collector paused as timeit does."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        loop(n)
        return time.perf_counter() - start
    finally:
        if collecting:
            gc.enable()


# -- latency -------------------------------------------------------------------------------

RATE = 200
"""Messages per second a latency benchmark sends."""
LATENCY_SAMPLES = 200 if QUICK else 1_000
PATIENCE = 30.0
"""Seconds to wait for the messages sent to be handled, before giving up."""


class Latencies:
    """Seconds from the send of each numbered message to its handler, as they come in.

    Stamp a number with ``sending`` just before it is sent (its handler may run before the
    send returns), and call ``handled`` with it from the handler, on any thread.
    """

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._sent: dict[int, float] = {}
        self._changed = threading.Condition()

    def sending(self, number: int) -> None:
        self._sent[number] = time.perf_counter()

    def handled(self, number: int) -> None:
        delay = time.perf_counter() - self._sent.pop(number)
        with self._changed:
            self.samples.append(delay)
            self._changed.notify_all()

    def wait(self, count: int = LATENCY_SAMPLES) -> None:
        """Block until ``count`` messages were handled since the last ``clear``."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.samples) >= count, PATIENCE):
                raise TimeoutError(f"{len(self.samples)} of {count} messages handled")

    async def await_(self, count: int = LATENCY_SAMPLES) -> None:
        """``wait`` for a handler on this event loop."""
        await asyncio.to_thread(self.wait, count)

    def clear(self) -> None:
        with self._changed:
            self.samples.clear()
            self._sent.clear()

    def percentiles(self) -> tuple[float, float]:
        """The p50 and p99 in milliseconds."""
        ordered = sorted(self.samples)
        return (
            statistics.median(ordered) * 1000,
            ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        )


WARM_UP = -1
"""The number of the message sent first, unmeasured, to see that the consumer listens."""


def paced(send: Callable[[int], None], latencies: Latencies) -> None:
    """Send a warm-up message, then ``LATENCY_SAMPLES`` at ``RATE``; wait for all of them."""
    latencies.clear()
    latencies.sending(WARM_UP)
    send(WARM_UP)
    latencies.wait(1)
    latencies.clear()
    interval = 1 / RATE
    next_at = time.perf_counter()
    for number in range(LATENCY_SAMPLES):
        next_at += interval
        latencies.sending(number)
        send(number)
        pause = next_at - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
    latencies.wait()


def paced_through(worker: Any, send: Callable[[int], None], latencies: Latencies) -> None:
    """``paced``, with ``worker`` (a busway ``Worker``) consuming in a thread meanwhile."""
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        paced(send, latencies)
    finally:
        worker.stop()
        thread.join()


async def apaced(send: Callable[[int], Awaitable[None]], latencies: Latencies) -> None:
    """``paced`` from an event loop."""
    latencies.clear()
    latencies.sending(WARM_UP)
    await send(WARM_UP)
    await latencies.await_(1)
    latencies.clear()
    interval = 1 / RATE
    next_at = time.perf_counter()
    for number in range(LATENCY_SAMPLES):
        next_at += interval
        latencies.sending(number)
        await send(number)
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    await latencies.await_()


def latency_results(
    name: str, busway: tuple[float, float], baseline: str, raw: tuple[float, float]
) -> list[Result]:
    """The p50 and p99 of ``name`` against those of ``baseline``, all in milliseconds."""
    name = f"{name}: end-to-end latency at {RATE} msg/s"
    return [
        Result(f"{name}, {which}", value, "ms", f"{baseline}, {which}", raw_value)
        for which, value, raw_value in zip(("p50", "p99"), busway, raw, strict=True)
    ]
