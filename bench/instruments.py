"""What tracing and metrics cost: the same work with ``Tracing`` and ``Metrics`` on, as a
ratio to the same work without them, in the same run.

Spans go to an SDK tracer provider with no exporter, so the figure is busway's
instrumentation (spans made, trace context written into and read from headers, counters and
a histogram updated), not an exporter's. Without instruments nothing of either module is
imported and each hook costs one truth test (``tests/core/test_instruments.py`` checks that
``import busway`` imports neither OpenTelemetry nor prometheus_client).
"""

from __future__ import annotations

import itertools
import tempfile
import time
import uuid
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from bench import Result
from bench.timing import QUICK, REPEAT, TARGET_SECONDS, calibrate, compare, timed
from busway import CommandBus, Messaging, SqlChannel, asynchronous, command_handler
from busway._internal.instruments import Instrument
from busway.channels.base import Delivery, Envelope
from busway.interceptors import Invocation
from busway.message import CORRELATION_ID, ID
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


def _provider(sampled: float) -> TracerProvider:
    return TracerProvider(sampler=ParentBased(TraceIdRatioBased(sampled)))


def _instruments(sampled: float = 1.0) -> list[Instrument]:
    return [Tracing(_provider(sampled)), Metrics()]


def benchmarks() -> list[Result]:
    return [send(), *drain(), *drain(sampled=0.1)]


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


def drain(sampled: float = 1.0) -> list[Result]:
    """The drain with instruments, and what the OpenTelemetry SDK alone costs it: the same
    drain with ``SdkOnly``, an instrument making the same spans with nothing else around its
    SDK calls (no metrics either), and the drain's time without instruments plus that of
    those calls in a loop of their own (``sdk_calls``), where the processor's caches are
    warm as they are not between the deliveries of a drain.

    ``sampled``: the share of traces the tracer provider records, as a busy service sets
    it; a trace not sampled costs a context read and a span that records nothing."""
    best = {"with": 0.0, "without": 0.0, "sdk": 0.0}
    with tempfile.TemporaryDirectory() as folder:
        runs: list[tuple[str, list[Instrument]]] = [
            ("without", []),
            ("with", _instruments(sampled)),
            ("sdk", [SdkOnly(_provider(sampled))]),
        ]
        for label, instruments in runs * (1 if QUICK else 2):
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
    floor = 1 / (1 / best["without"] + sdk_calls(sampled))
    return [
        Result(
            f"instruments: SQLite drain {DRAIN:,} messages, tracing and metrics on{sampling}",
            best["with"],
            "msg/s",
            "the same drain without instruments",
            best["without"],
        ),
        Result(
            f"instruments: the same drain, only the OpenTelemetry SDK's calls{sampling}",
            best["sdk"],
            "msg/s",
            "the same drain without instruments",
            best["without"],
        ),
        Result(
            f"instruments: the same drain's time plus the SDK's calls in a loop{sampling}",
            floor,
            "msg/s",
            "the same drain without instruments",
            best["without"],
        ),
    ]


class SdkOnly(Instrument):
    """The OpenTelemetry calls ``Tracing`` makes, written straight: a producer span whose
    context is written into the headers; a consumer span, child of the context read from
    them, with the same attributes, made current, and told the handler and the attempt."""

    def __init__(self, provider: TracerProvider) -> None:
        self.tracer = provider.get_tracer("bench")

    def sending(self, channel: str, envelope: Envelope) -> AbstractContextManager[Envelope]:
        return _SdkSend(self.tracer, channel, envelope)

    def receiving(self, delivery: Delivery) -> AbstractContextManager[None]:
        return _SdkProcess(self.tracer, delivery)

    def handling(self, invocation: Invocation) -> AbstractContextManager[None]:
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes(
                {
                    "busway.handler": invocation.handler.name,
                    "busway.attempt": invocation.message.headers.attempt,
                }
            )
        return nullcontext()


class _SdkSend:
    def __init__(self, tracer: trace.Tracer, channel: str, envelope: Envelope) -> None:
        self.tracer = tracer
        self.channel = channel
        self.envelope = envelope

    def __enter__(self) -> Envelope:
        headers = self.envelope.headers
        attributes = {
            **_CONSTANT,
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.message.id": str(headers[ID]),
            "messaging.message.conversation_id": str(headers[CORRELATION_ID]),
        }
        self.span = self.tracer.start_span(
            f"send {self.channel}", kind=trace.SpanKind.PRODUCER, attributes=attributes
        )
        self.token = context.attach(trace.set_span_in_context(self.span))
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return Envelope(self.envelope.body, {**headers, **carrier})

    def __exit__(self, *exc_info: object) -> None:
        context.detach(self.token)
        self.span.end()


class _SdkProcess:
    def __init__(self, tracer: trace.Tracer, delivery: Delivery) -> None:
        self.tracer = tracer
        self.delivery = delivery

    def __enter__(self) -> None:
        headers = self.delivery.envelope.headers
        parent = propagate.extract(headers)
        attributes = {
            **_CONSTANT,
            "messaging.message.id": str(headers[ID]),
            "messaging.message.conversation_id": str(headers[CORRELATION_ID]),
        }
        self.span = self.tracer.start_span(
            f"process {self.delivery.channel}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        )
        self.token = context.attach(trace.set_span_in_context(self.span))

    def __exit__(self, *exc_info: object) -> None:
        context.detach(self.token)
        self.span.end()


_CONSTANT = {
    "messaging.system": "busway.sql",
    "messaging.destination.name": "jobs",
    "messaging.operation.type": "process",
    "messaging.operation.name": "process",
}


def sdk_calls(sampled: float) -> float:
    """Best seconds for the OpenTelemetry calls ``Tracing`` makes for one delivery, written
    straight: the trace context read from the headers, a consumer span started with the same
    attributes and made current, the handler and attempt set on it, then ended. Each message
    has headers of its own, written by a producer span of the same tracer provider."""
    tracer = _provider(sampled).get_tracer("bench")
    messages = []
    for _ in range(1_000):
        carrier: dict[str, str] = {}
        with tracer.start_as_current_span("send jobs", kind=trace.SpanKind.PRODUCER):
            propagate.inject(carrier)
        messages.append({"id": str(uuid.uuid4()), "correlation_id": str(uuid.uuid4()), **carrier})
    handler = f"{tick.__module__}.{tick.__qualname__}"

    def deliveries(n: int) -> None:
        for headers in itertools.islice(itertools.cycle(messages), n):
            parent = propagate.extract(headers)
            attributes = {
                **_CONSTANT,
                "messaging.message.id": headers["id"],
                "messaging.message.conversation_id": headers["correlation_id"],
            }
            span = tracer.start_span(
                "process jobs",
                context=parent,
                kind=trace.SpanKind.CONSUMER,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            )
            token = context.attach(trace.set_span_in_context(span))
            if span.is_recording():
                span.set_attributes({"busway.handler": handler, "busway.attempt": 0})
            context.detach(token)
            span.end()

    n = calibrate(deliveries, TARGET_SECONDS / 10 if QUICK else TARGET_SECONDS)
    return min(timed(deliveries, n) / n for _ in range(2 if QUICK else REPEAT))
