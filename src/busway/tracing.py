"""OpenTelemetry tracing: one trace for a message and everything it causes.

``Messaging(instruments=[Tracing()])`` makes a span for every send to a channel (a producer
span, whose W3C trace context travels in the message's headers), for every delivery a worker
handles (a consumer span, child of the context that came with the message), and for every
call of a handler (each try). A message a handler sends is a child of that handler's span, so
a command, the events it publishes, their relay to a broker and their handlers are one trace.

Only ``opentelemetry-api`` is needed at run time (``pip install busway[otel]``); spans go
wherever the application's tracer provider sends them. The span names and attributes follow
OpenTelemetry's semantic conventions for messaging.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from busway._internal.instruments import Instrument
from busway.channels.base import BatchRollback, Channel, Delivery, Envelope
from busway.interceptors import Invocation
from busway.message import CORRELATION_ID, ID, HeaderValue
from busway.recovery import DeadLetter

try:
    from opentelemetry import propagate, trace
    from opentelemetry.propagators.textmap import Getter
except ImportError as missing:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "busway.tracing needs OpenTelemetry; install busway[otel] (pip install 'busway[otel]')"
    ) from missing

# Where a channel's messages travel, as the conventions' ``messaging.system`` names it.
_SYSTEMS = {
    "AmqpChannel": "rabbitmq",
    "RedisChannel": "redis",
    "NatsChannel": "nats",
    "SqlChannel": "busway.sql",
    "InMemoryChannel": "busway.memory",
}


class _HeaderGetter(Getter[Mapping[str, HeaderValue]]):
    """Reads a trace context from message headers; a header that is not text is no context
    (a malformed message must still be handled, or dead-lettered, never fail here)."""

    def get(self, carrier: Mapping[str, HeaderValue], key: str) -> list[str] | None:
        value = carrier.get(key)
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Mapping[str, HeaderValue]) -> list[str]:
        return list(carrier)


_GETTER = _HeaderGetter()


def _version() -> str:
    try:
        return version("busway")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


class Tracing(Instrument):
    """Spans for sends, deliveries and handler calls; ``tracer_provider`` defaults to the
    global one (``opentelemetry.trace.set_tracer_provider``)."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer("busway", _version(), tracer_provider)
        self._systems: dict[str, str] = {}

    def attach(self, channels: Mapping[str, Channel]) -> None:
        self._systems = {
            name: _SYSTEMS.get(type(channel).__name__, "busway")
            for name, channel in channels.items()
        }

    @contextmanager
    def sending(self, channel: str, envelope: Envelope) -> Iterator[Envelope]:
        headers = envelope.headers
        attributes = self._attributes(channel, headers, "send")
        with self._tracer.start_as_current_span(
            f"send {channel}", kind=trace.SpanKind.PRODUCER, attributes=attributes
        ):
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            yield Envelope(envelope.body, {**headers, **carrier})

    @contextmanager
    def receiving(self, delivery: Delivery) -> Iterator[None]:
        headers = delivery.envelope.headers
        parent = propagate.extract(headers, getter=_GETTER)
        attributes = self._attributes(delivery.channel, headers, "process")
        if delivery.redelivered:
            attributes["busway.redelivered"] = True
        with self._tracer.start_as_current_span(
            f"process {delivery.channel}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield
            except BatchRollback:
                # Not a failure of this message: its batch is rolled back and handled again,
                # which a span of its own shows; a handler's error is on the handler's span.
                span.set_attribute("busway.rolled_back", True)
                raise
            except BaseException as error:
                span.record_exception(error)
                span.set_status(trace.StatusCode.ERROR, f"{type(error).__qualname__}: {error}")
                span.set_attribute("error.type", type(error).__qualname__)
                raise

    @contextmanager
    def handling(self, invocation: Invocation) -> Iterator[None]:
        message = invocation.message
        attributes: dict[str, Any] = {
            "busway.handler": invocation.handler.name,
            "busway.kind": invocation.handler.kind.value,
            "busway.attempt": message.headers.attempt,
            "messaging.message.id": message.headers.id,
        }
        correlation = message.headers.get(CORRELATION_ID)
        if isinstance(correlation, str):
            attributes["messaging.message.conversation_id"] = correlation
        if invocation.delivery is not None:
            attributes["messaging.destination.name"] = invocation.delivery.channel
        with self._tracer.start_as_current_span(
            f"handle {invocation.handler.name}", attributes=attributes
        ):
            yield

    def retried(self, delivery: Delivery, handler: str, error: BaseException) -> None:
        trace.get_current_span().add_event(
            "busway.retry",
            {"busway.handler": handler, "error.type": type(error).__qualname__},
        )

    def dead_lettered(self, letter: DeadLetter) -> None:
        span = trace.get_current_span()
        span.add_event(
            "busway.dead_letter",
            {
                "busway.dead_letter.id": letter.id,
                "busway.handler": letter.handler or "",
                "error.type": letter.error_type,
            },
        )

    def _attributes(
        self, channel: str, headers: Mapping[str, HeaderValue], operation: str
    ) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "messaging.system": self._systems.get(channel, "busway"),
            "messaging.destination.name": channel,
            "messaging.operation.type": operation,
            "messaging.operation.name": operation,
        }
        message_id = headers.get(ID)
        if isinstance(message_id, str):
            attributes["messaging.message.id"] = message_id
        correlation = headers.get(CORRELATION_ID)
        if isinstance(correlation, str):
            attributes["messaging.message.conversation_id"] = correlation
        return attributes
