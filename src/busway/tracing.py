"""OpenTelemetry tracing: one trace for a message and everything it causes.

``Messaging(instruments=[Tracing()])`` makes a span for every send to a channel (a producer
span, whose W3C trace context travels in the message's headers) and for every delivery a
worker handles (a consumer span, child of the context that came with the message, naming the
handler and the attempt, with each handler's failure recorded on it). A message a handler
sends is a child of that span, so a command, the events it publishes, their relay to a broker
and their handlers are one trace. A handler a gateway calls at once, through no channel, is a
function call within its caller's span.

Only ``opentelemetry-api`` is needed at run time (``pip install busway[otel]``); spans go
wherever the application's tracer provider sends them. The span names and attributes follow
OpenTelemetry's semantic conventions for messaging.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from busway._internal.instruments import Instrument, failure_of
from busway.channels.base import BatchRollback, Channel, Delivery, Envelope
from busway.errors import extra_required
from busway.interceptors import Invocation
from busway.message import CORRELATION_ID, ID, HeaderValue
from busway.recovery import DeadLetter

with extra_required("busway.tracing", "otel"):
    from opentelemetry import propagate, trace
    from opentelemetry.propagators.textmap import Getter

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
                # Not this delivery's failure: its batch is rolled back and handled again,
                # which a span of its own shows. A handler's error that caused it was
                # recorded on this span by ``handling``.
                span.set_attribute("busway.rolled_back", True)
                raise
            except BaseException as error:
                span.record_exception(error)
                span.set_status(trace.StatusCode.ERROR, f"{type(error).__qualname__}: {error}")
                span.set_attribute("error.type", _type_name(error))
                raise

    @contextmanager
    def handling(self, invocation: Invocation) -> Iterator[None]:
        # A handler's call is told on its delivery's span, not a span of its own: a span is
        # the costliest thing tracing makes, and one per hop is what a trace needs.
        span = trace.get_current_span()
        if not span.is_recording():  # a trace not sampled
            yield
            return
        handler = invocation.handler.name
        span.set_attribute("busway.handler", handler)
        span.set_attribute("busway.attempt", invocation.message.headers.attempt)
        try:
            yield
        except BaseException as error:
            failure = failure_of(error)
            if failure is not None:
                span.record_exception(failure, {"busway.handler": handler})
                span.set_status(trace.StatusCode.ERROR, f"{handler}: {_type_name(failure)}")
                span.set_attribute("error.type", _type_name(failure))
            raise

    def retried(self, delivery: Delivery, handler: str, error: BaseException) -> None:
        trace.get_current_span().add_event(
            "busway.retry",
            {"busway.handler": handler, "error.type": _type_name(error)},
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


def _type_name(error: BaseException) -> str:
    return f"{type(error).__module__}.{type(error).__qualname__}"
