"""Instruments: what they see of a message's life, what they cost when there are none, and
what a malformed trace context does (nothing)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, Sampler
from opentelemetry.trace import StatusCode

from busway import (
    CommandBus,
    DeadLetter,
    InMemoryChannel,
    Instrument,
    Invocation,
    Messaging,
    RetryPolicy,
    asynchronous,
    command_handler,
)
from busway.channels.base import Delivery, Envelope
from busway.handlers import Kind
from busway.message import HeaderValue
from busway.tracing import Tracing


@dataclass
class Job:
    number: int


@asynchronous("jobs")
class Jobs(CommandBus):
    pass


class Journal(Instrument):
    """Writes down every hook it is called with."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    @contextmanager
    def sending(self, channel: str, envelope: Envelope) -> Iterator[Envelope]:
        self.lines.append(f"send {channel}")
        yield Envelope(envelope.body, {**envelope.headers, "journal": "seen"})

    @contextmanager
    def receiving(self, delivery: Delivery) -> Iterator[None]:
        self.lines.append(f"receive {delivery.envelope.headers.get('journal')}")
        yield

    @contextmanager
    def handling(self, invocation: Invocation) -> Iterator[None]:
        try:
            yield
        except Exception as error:
            self.lines.append(f"failed {type(error).__name__}")
            raise
        self.lines.append("handled")

    def retried(self, delivery: Delivery, handler: str, error: BaseException) -> None:
        self.lines.append("retried")

    def dead_lettered(self, letter: DeadLetter) -> None:
        self.lines.append(f"dead letter {letter.error_type}")


def test_an_instrument_sees_each_send_delivery_call_retry_and_dead_letter() -> None:
    journal = Journal()

    @command_handler
    def work(job: Job) -> None:
        if job.number < 0:
            raise ValueError("negative")

    messaging = Messaging(
        handlers=[work],
        channels=[InMemoryChannel("jobs")],
        retry=RetryPolicy(retries=1, initial_delay=0, jitter=0),
        instruments=[journal],
    )
    jobs = messaging.gateway(Jobs)
    jobs.send(Job(1))
    messaging.run("jobs")
    assert journal.lines == ["send jobs", "receive seen", "handled"]

    journal.lines.clear()
    jobs.send(Job(-1))
    messaging.run("jobs")
    assert journal.lines == [
        "send jobs",
        "receive seen",
        "failed ValueError",
        "send jobs",  # the retry
        "retried",
        "receive seen",
        "failed ValueError",
        "dead letter builtins.ValueError",
    ]


def test_a_handler_a_gateway_calls_at_once_is_no_instruments_business() -> None:
    journal = Journal()
    calls: list[int] = []

    @command_handler
    def work(job: Job) -> None:
        calls.append(job.number)

    messaging = Messaging(handlers=[work], instruments=[journal])
    messaging.command_bus.send(Job(7))
    assert calls == [7]
    assert journal.lines == []


def test_a_malformed_trace_context_is_no_context() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    channel = InMemoryChannel("jobs")
    done: list[int] = []

    @command_handler
    def work(job: Job) -> None:
        done.append(job.number)

    messaging = Messaging(handlers=[work], channels=[channel], instruments=[Tracing(provider)])
    runtime = messaging.runtime
    for number, traceparent in enumerate([12, "00-zz-garbage-01", True, "", 1.5]):
        message = runtime.new_message(Kind.COMMAND, Job(number), None, None, None)
        envelope = runtime.envelope(message, {})
        # Straight into the channel, past the producer's span that would write a good one.
        channel.send(Envelope(envelope.body, {**envelope.headers, "traceparent": traceparent}))
    messaging.run("jobs")
    assert done == [0, 1, 2, 3, 4]
    processed = [span for span in exporter.get_finished_spans() if span.name == "process jobs"]
    assert len(processed) == 5
    assert all(span.parent is None for span in processed)  # each a trace of its own


def test_import_busway_imports_neither_opentelemetry_nor_prometheus_client() -> None:
    script = (
        "import sys, busway\n"
        "loaded = [m for m in ('opentelemetry', 'prometheus_client') if m in sys.modules]\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_metrics_count_every_call_of_workers_in_several_threads() -> None:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from busway.metrics import Metrics

    @command_handler
    def work(job: Job) -> None:
        pass

    metrics = Metrics()
    messaging = Messaging(
        handlers=[work], channels=[InMemoryChannel("jobs")], instruments=[metrics]
    )
    for number in range(2_000):
        messaging.gateway(Jobs).send(Job(number))
    messaging.run("jobs", concurrency=4)
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        for sample in family.samples
    }
    assert samples["busway_messages_sent_total"] == 2_000
    assert samples["busway_messages_handled_total"] == 2_000
    assert samples["busway_handling_seconds_count"] == 2_000


class Nesting(Instrument):
    """Writes down when each of its hooks is entered and exited, under its name."""

    def __init__(self, name: str, lines: list[str], *, failing: str = "") -> None:
        self.name = name
        self.lines = lines
        self.failing = failing

    @contextmanager
    def _around(self, hook: str) -> Iterator[None]:
        self.lines.append(f"{self.name} enters {hook}")
        try:
            yield
        except Exception as error:
            self.lines.append(f"{self.name} exits {hook} with {type(error).__name__}")
            raise
        self.lines.append(f"{self.name} exits {hook}")
        if self.failing == hook:
            raise LookupError(f"{self.name} fails on leaving {hook}")

    @contextmanager
    def sending(self, channel: str, envelope: Envelope) -> Iterator[Envelope]:
        with self._around("send"):
            seen = envelope.headers.get("nesting", "")
            yield Envelope(envelope.body, {**envelope.headers, "nesting": f"{seen}{self.name}"})

    def receiving(self, delivery: Delivery) -> AbstractContextManager[None]:
        self.lines.append(f"{self.name} sees {delivery.envelope.headers.get('nesting')}")
        return self._around("receive")

    def handling(self, invocation: Invocation) -> AbstractContextManager[None]:
        return self._around("handle")


class Silent(Instrument):
    """Overrides no hook: the runtime calls none of its defaults."""


def test_several_instruments_nest_in_the_order_they_were_given() -> None:
    lines: list[str] = []

    @command_handler
    def work(job: Job) -> None:
        lines.append("handler")
        if job.number < 0:
            raise ValueError("negative")

    instruments = [Nesting("a", lines), Silent(), Nesting("b", lines)]
    messaging = Messaging(
        handlers=[work], channels=[InMemoryChannel("jobs")], instruments=instruments
    )
    messaging.gateway(Jobs).send(Job(1))
    messaging.run("jobs")
    assert lines == [
        "a enters send",
        "b enters send",
        "b exits send",
        "a exits send",
        "a sees ab",  # b's send saw what a's made
        "a enters receive",
        "b sees ab",
        "b enters receive",
        "a enters handle",
        "b enters handle",
        "handler",
        "b exits handle",
        "a exits handle",
        "b exits receive",
        "a exits receive",
    ]

    lines.clear()
    messaging.gateway(Jobs).send(Job(-1))
    messaging.run("jobs")
    handled = lines[lines.index("handler") :]
    assert handled[:3] == [
        "handler",
        "b exits handle with ValueError",
        "a exits handle with ValueError",
    ]


def test_an_instrument_failing_on_its_way_out_is_what_the_outer_ones_see() -> None:
    lines: list[str] = []

    @command_handler
    def work(job: Job) -> None:
        lines.append("handler")

    instruments = [Nesting("a", lines), Nesting("b", lines, failing="handle")]
    messaging = Messaging(
        handlers=[work],
        channels=[InMemoryChannel("jobs")],
        retry=RetryPolicy(retries=0),
        instruments=instruments,
    )
    messaging.gateway(Jobs).send(Job(1))
    messaging.run("jobs")
    handled = lines[lines.index("handler") :]
    assert handled[:3] == ["handler", "b exits handle", "a exits handle with LookupError"]


def _traced(sampler: Sampler | None = None) -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider() if sampler is None else TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider), exporter


def test_a_failing_handler_its_retry_and_its_dead_letter_are_on_its_spans() -> None:
    tracing, exporter = _traced()

    @command_handler
    def work(job: Job) -> None:
        raise ValueError("negative")

    messaging = Messaging(
        handlers=[work],
        channels=[InMemoryChannel("jobs")],
        retry=RetryPolicy(retries=1, initial_delay=0, jitter=0),
        instruments=[tracing],
    )
    messaging.gateway(Jobs).send(Job(-1))
    messaging.run("jobs")
    spans = {span.name: [] for span in exporter.get_finished_spans()}
    for span in exporter.get_finished_spans():
        spans[span.name].append(span)
    first, second = sorted(spans["process jobs"], key=lambda span: span.start_time or 0)
    for span, attempt, event in ((first, 0, "busway.retry"), (second, 1, "busway.dead_letter")):
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes is not None
        assert str(span.attributes["busway.handler"]).endswith(".work")
        assert span.attributes["busway.attempt"] == attempt
        assert span.attributes["error.type"] == "builtins.ValueError"
        assert span.attributes["messaging.operation.type"] == "process"
        assert span.attributes["messaging.system"] == "busway.memory"
        assert [e.name for e in span.events] == ["exception", event]
        assert span.events[1].attributes is not None
        assert span.events[1].attributes["error.type"] == "builtins.ValueError"
    assert len(spans["send jobs"]) == 2  # the first send, and the retry's


def test_a_send_that_fails_is_recorded_on_its_span() -> None:
    tracing, exporter = _traced()

    class Refusing(Instrument):
        @contextmanager
        def sending(self, channel: str, envelope: Envelope) -> Iterator[Envelope]:
            raise ConnectionError("no way out")
            yield envelope

    messaging = Messaging(
        handlers=[], channels=[InMemoryChannel("jobs")], instruments=[tracing, Refusing()]
    )
    try:
        messaging.gateway(Jobs).send(Job(1))
    except ConnectionError:
        pass
    else:
        raise AssertionError("the send did not fail")
    [span] = exporter.get_finished_spans()
    assert span.name == "send jobs"
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "ConnectionError: no way out"
    assert [event.name for event in span.events] == ["exception"]


def test_a_trace_not_sampled_makes_no_span_and_goes_on_unsampled() -> None:
    tracing, exporter = _traced(ParentBased(ALWAYS_OFF))
    sent: list[HeaderValue] = []

    class Headers(Instrument):
        def receiving(self, delivery: Delivery) -> AbstractContextManager[None]:
            sent.append(delivery.envelope.headers.get("traceparent"))
            return nullcontext()

    @command_handler
    def work(job: Job, jobs: Jobs) -> None:
        if job.number > 0:
            jobs.send(Job(job.number - 1))

    messaging = Messaging(
        handlers=[work], channels=[InMemoryChannel("jobs")], instruments=[tracing, Headers()]
    )
    messaging.gateway(Jobs).send(Job(2))
    assert messaging.run("jobs").handled == 3
    assert exporter.get_finished_spans() == ()
    assert len(sent) == 3
    contexts = [str(header).split("-") for header in sent]
    assert len({trace_id for _, trace_id, _, _ in contexts}) == 1  # one trace, still
    assert not any(int(flags, 16) & 1 for *_, flags in contexts)  # none sampled
