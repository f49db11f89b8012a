"""Timing a loop against its baseline, timeit-style, with the repetitions interleaved."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable

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
