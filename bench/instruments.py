"""What tracing and metrics cost: the same work with ``Tracing`` and ``Metrics`` on, as a
ratio to the same work without them, in the same run.

Spans go to an SDK tracer provider with no exporter, so the figure is busway's
instrumentation (spans made, trace context written into and read from headers, counters and
a histogram updated), not an exporter's. Without instruments nothing of either module is
imported and each hook costs one truth test (``tests/core/test_instruments.py`` checks that
``import busway`` imports neither OpenTelemetry nor prometheus_client).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from bench import Result
from bench.timing import QUICK, compare
from busway import CommandBus, Messaging, SqlChannel, asynchronous, command_handler
from busway._internal.instruments import Instrument
from busway.metrics import Metrics
from busway.tracing import Tracing

DRAIN = 2_000 if QUICK else 20_000


@dataclass
class Tick:
    number: int


@asynchronous("jobs")
class Jobs(CommandBus):
    pass


done: list[int] = []


@command_handler
def tick(command: Tick) -> None:
    done.append(command.number)


def _instruments(sampled: float = 1.0) -> list[Instrument]:
    sampler = ParentBased(TraceIdRatioBased(sampled))
    return [Tracing(TracerProvider(sampler=sampler)), Metrics()]


def benchmarks() -> list[Result]:
    return [send(), drain(), drain(sampled=0.1)]


def send() -> Result:
    plain = Messaging(handlers=[tick]).command_bus
    watched = Messaging(handlers=[tick], instruments=_instruments()).command_bus
    command = Tick(0)

    def with_instruments(n: int) -> None:
        for _ in range(n):
            watched.send(command)

    def without(n: int) -> None:
        for _ in range(n):
            plain.send(command)

    done.clear()
    value, baseline = compare(with_instruments, without)
    done.clear()
    return Result(
        "instruments: CommandBus.send, tracing and metrics on",
        1 / value,
        "msg/s",
        "the same send without instruments",
        1 / baseline,
    )


def drain(sampled: float = 1.0) -> Result:
    """``sampled``: the share of traces the tracer provider records, as a busy service sets
    it; a trace not sampled costs a context read, not a span."""
    best = {"with": 0.0, "without": 0.0}
    with tempfile.TemporaryDirectory() as folder:
        runs = (("without", []), ("with", _instruments(sampled))) * (1 if QUICK else 2)
        for label, instruments in runs:
            url = f"sqlite:///{Path(folder) / f'{label}-{time.monotonic_ns()}.db'}"
            messaging = Messaging(
                handlers=[tick],
                channels=[SqlChannel("jobs")],
                database=url,
                instruments=instruments,
            )
            messaging.setup()
            jobs = messaging.gateway(Jobs)
            with messaging.transaction():
                for number in range(DRAIN):
                    jobs.send(Tick(number))
            done.clear()
            start = time.perf_counter()
            messaging.run("jobs")
            seconds = time.perf_counter() - start
            messaging.close()
            assert len(done) == DRAIN, f"handled {len(done)} of {DRAIN}"
            best[label] = max(best[label], DRAIN / seconds)
    sampling = "" if sampled == 1.0 else f", {sampled:.0%} of traces sampled"
    return Result(
        f"instruments: SQLite drain {DRAIN:,} messages, tracing and metrics on{sampling}",
        best["with"],
        "msg/s",
        "the same drain without instruments",
        best["without"],
    )
