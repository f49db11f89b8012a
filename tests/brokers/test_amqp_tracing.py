"""One trace across every hop: a command through an outbox relayed to RabbitMQ, its handler's
event, and the message that event's handler sends, failing once and retried."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from amqp_support import broker as broker  # fixtures: pytest finds them by name
from amqp_support import queues as queues
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from busway import (
    CommandBus,
    EventBus,
    Messaging,
    RetryPolicy,
    SqlChannel,
    asynchronous,
    command_handler,
    event_handler,
)
from busway.amqp import AmqpChannel
from busway.tracing import Tracing


@dataclass
class PlaceOrder:
    order_id: str


@dataclass
class OrderWasPlaced:
    order_id: str


@dataclass
class SendReceipt:
    order_id: str


@asynchronous("outbox", "rabbit")
class RelayedCommands(CommandBus):
    """Committed to the outbox, relayed to RabbitMQ, handled from there."""


@asynchronous("outbox")
class OutboxCommands(CommandBus):
    """Committed to the outbox, handled from it."""


@pytest.mark.parametrize("mode", ["run", "arun"])
def test_a_command_and_everything_it_causes_are_one_trace(
    tmp_path: Path, amqp_url: str, queues: Callable[[], str], mode: str
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    receipts: list[str] = []
    tries: list[str] = []

    @command_handler
    def place(command: PlaceOrder, events: EventBus) -> None:
        events.publish(OrderWasPlaced(command.order_id))

    @event_handler
    def on_placed(event: OrderWasPlaced, commands: OutboxCommands) -> None:
        commands.send(SendReceipt(event.order_id))

    @command_handler
    def send_receipt(command: SendReceipt) -> None:
        tries.append(command.order_id)
        if len(tries) == 1:
            raise ConnectionError("mail server away")
        receipts.append(command.order_id)

    messaging = Messaging(
        handlers=[place, on_placed, send_receipt],
        channels=[SqlChannel("outbox"), AmqpChannel("rabbit", amqp_url, queue=queues())],
        database=f"sqlite:///{tmp_path / 'outbox.db'}",
        retry=RetryPolicy(retries=1, initial_delay=0, jitter=0),
        instruments=[Tracing(provider)],
    )
    try:
        messaging.setup()
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("request") as request, messaging.transaction():
            messaging.gateway(RelayedCommands).send(PlaceOrder("o-1"))

        def run(channel: str) -> int:
            if mode == "run":
                return messaging.run(channel).handled
            return asyncio.run(_arun(messaging, channel))

        assert run("outbox") == 1  # relayed
        assert run("rabbit") == 1  # placed; the receipt is in the outbox
        run("outbox")  # the receipt fails, goes back, and is sent the second time
    finally:
        messaging.close()
    assert receipts == ["o-1"]

    spans = exporter.get_finished_spans()
    trace_id = request.get_span_context().trace_id
    assert {span.context.trace_id for span in spans} == {trace_id}
    by_id = {span.context.span_id: span for span in spans}

    def parent(span: ReadableSpan) -> ReadableSpan:
        assert span.parent is not None, f"{span.name} has no parent"
        return by_id[span.parent.span_id]

    def named(name: str) -> list[ReadableSpan]:
        return sorted((s for s in spans if s.name == name), key=lambda s: s.start_time or 0)

    [first_send] = [s for s in named("send outbox") if parent(s).name == "request"]
    assert first_send.kind is SpanKind.PRODUCER
    assert first_send.attributes is not None
    assert first_send.attributes["messaging.system"] == "busway.sql"
    assert first_send.attributes["messaging.destination.name"] == "outbox"
    assert first_send.attributes["messaging.operation.type"] == "send"
    assert isinstance(first_send.attributes["messaging.message.id"], str)
    conversation = first_send.attributes["messaging.message.conversation_id"]

    [relay] = [s for s in named("process outbox") if parent(s) is first_send]
    assert relay.kind is SpanKind.CONSUMER
    [to_rabbit] = named("send rabbit")
    assert parent(to_rabbit) is relay
    assert to_rabbit.attributes is not None
    assert to_rabbit.attributes["messaging.system"] == "rabbitmq"
    [from_rabbit] = named("process rabbit")
    assert parent(from_rabbit) is to_rabbit
    assert from_rabbit.kind is SpanKind.CONSUMER

    assert from_rabbit.attributes is not None
    assert str(from_rabbit.attributes["busway.handler"]).endswith(".place")
    assert from_rabbit.attributes["busway.attempt"] == 0
    assert from_rabbit.attributes["messaging.message.conversation_id"] == conversation
    assert from_rabbit.status.status_code is not StatusCode.ERROR

    # The event bus calls on_placed at once, inside place: its send is a child of the
    # delivery from RabbitMQ.
    [receipt_send] = [s for s in named("send outbox") if parent(s) is from_rabbit]
    # A SQL batch in which a handler fails is rolled back and handled again, so the first
    # delivery of the receipt may show as two spans: the one rolled back, then the one that
    # decides on the failure.
    receipt_first = [s for s in named("process outbox") if parent(s) is receipt_send]
    [failed] = [s for s in receipt_first if any(e.name == "exception" for e in s.events)]
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None
    assert str(failed.attributes["busway.handler"]).endswith(".send_receipt")
    assert failed.attributes["busway.attempt"] == 0
    assert failed.attributes["error.type"] == "builtins.ConnectionError"
    [deciding] = [s for s in receipt_first if any(e.name == "busway.retry" for e in s.events)]

    [retry_send] = [s for s in named("send outbox") if parent(s) is deciding]
    [receipt_second] = [s for s in named("process outbox") if parent(s) is retry_send]
    assert receipt_second.status.status_code is not StatusCode.ERROR
    assert receipt_second.attributes is not None
    assert receipt_second.attributes["busway.attempt"] == 1
    assert len(spans) == 8 + len(receipt_first)  # nothing else, nothing twice
    assert all(
        span.attributes is not None
        and span.attributes.get("messaging.message.conversation_id", conversation) == conversation
        for span in spans
    )


async def _arun(messaging: Messaging, channel: str) -> int:
    try:
        return (await messaging.arun(channel)).handled
    finally:
        await messaging.aclose()
