"""Instruments: what they see of a message's life, what they cost when there are none, and
what a malformed trace context does (nothing)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

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
