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

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from importlib.metadata import PackageNotFoundError, version
from types import TracebackType
from typing import Any

from busway._internal.instruments import Instrument, failure_of
from busway.channels.base import BatchRollback, Channel, Delivery, Envelope
from busway.errors import extra_required
from busway.interceptors import Invocation
from busway.message import CORRELATION_ID, ID, HeaderValue
from busway.recovery import DeadLetter

with extra_required("busway.tracing", "otel"):
    from opentelemetry import context, propagate, trace
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

_UNTOLD: AbstractContextManager[None] = nullcontext()
"""A handler's call in a trace that is not sampled: nothing to write on its span."""


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
        self._sends: dict[str, tuple[str, dict[str, Any]]] = {}
        self._processes: dict[str, tuple[str, dict[str, Any]]] = {}

    def attach(self, channels: Mapping[str, Channel]) -> None:
        # A span's name and the attributes that are the same for every message of a channel,
        # made once: each span takes a copy.
        self._sends = {name: _constant(name, channel, "send") for name, channel in channels.items()}
        self._processes = {
            name: _constant(name, channel, "process") for name, channel in channels.items()
        }

    def sending(self, channel: str, envelope: Envelope) -> AbstractContextManager[Envelope]:
        name, constant = self._sends.get(channel) or _constant(channel, None, "send")
        attributes = _attributes(constant, envelope.headers)
        return _Sending(self._tracer, name, attributes, envelope)

    def receiving(self, delivery: Delivery) -> AbstractContextManager[None]:
        channel = delivery.channel
        name, constant = self._processes.get(channel) or _constant(channel, None, "process")
        return _Receiving(self._tracer, name, constant, delivery)

    def handling(self, invocation: Invocation) -> AbstractContextManager[None]:
        # A handler's call is told on its delivery's span, not a span of its own: a span is
        # the costliest thing tracing makes, and one per hop is what a trace needs.
        span = trace.get_current_span()
        if not span.is_recording():  # a trace not sampled
            return _UNTOLD
        return _Handling(span, invocation)

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


def _constant(name: str, channel: Channel | None, operation: str) -> tuple[str, dict[str, Any]]:
    """A span's name for ``operation`` on a channel, and the attributes all its spans share."""
    system = "busway" if channel is None else _SYSTEMS.get(type(channel).__name__, "busway")
    return f"{operation} {name}", {
        "messaging.system": system,
        "messaging.destination.name": name,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
    }


def _attributes(constant: dict[str, Any], headers: Mapping[str, HeaderValue]) -> dict[str, Any]:
    """A channel's ``constant`` attributes, with those of the message ``headers`` belong to."""
    attributes = constant.copy()
    message_id = headers.get(ID)
    if isinstance(message_id, str):
        attributes["messaging.message.id"] = message_id
    correlation = headers.get(CORRELATION_ID)
    if isinstance(correlation, str):
        attributes["messaging.message.conversation_id"] = correlation
    return attributes


# The spans are made with ``start_span`` and made current with ``context.attach``, in
# context managers of their own: what ``start_as_current_span`` does, without its layers of
# generator-based context managers, which cost as much again as a span's bookkeeping.


class _Sending:
    """A producer span around one send, whose context goes out in the envelope's headers."""

    __slots__ = ("_attributes", "_envelope", "_name", "_span", "_token", "_tracer")

    def __init__(
        self, tracer: trace.Tracer, name: str, attributes: dict[str, Any], envelope: Envelope
    ) -> None:
        self._tracer = tracer
        self._name = name
        self._attributes = attributes
        self._envelope = envelope

    def __enter__(self) -> Envelope:
        span = self._span = self._tracer.start_span(
            self._name, kind=trace.SpanKind.PRODUCER, attributes=self._attributes
        )
        self._token = context.attach(trace.set_span_in_context(span))
        try:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
        except BaseException as error:
            self.__exit__(type(error), error, error.__traceback__)
            raise
        envelope = self._envelope
        return Envelope(envelope.body, {**envelope.headers, **carrier})

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        span = self._span
        try:
            context.detach(self._token)
            if isinstance(error, Exception) and span.is_recording():
                span.record_exception(error)
                span.set_status(trace.StatusCode.ERROR, f"{type(error).__name__}: {error}")
        finally:
            span.end()


class _Receiving:
    """A consumer span around a worker's handling of one delivery, child of the context that
    came with the message."""

    __slots__ = ("_constant", "_delivery", "_name", "_span", "_token", "_tracer")

    def __init__(
        self, tracer: trace.Tracer, name: str, constant: dict[str, Any], delivery: Delivery
    ) -> None:
        self._tracer = tracer
        self._name = name
        self._constant = constant
        self._delivery = delivery

    def __enter__(self) -> None:
        delivery = self._delivery
        headers = delivery.envelope.headers
        parent = propagate.extract(headers, getter=_GETTER)
        attributes = _attributes(self._constant, headers)
        if delivery.redelivered:
            attributes["busway.redelivered"] = True
        span = self._span = self._tracer.start_span(
            self._name,
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        )
        self._token = context.attach(trace.set_span_in_context(span))

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        span = self._span
        try:
            if isinstance(error, BatchRollback):
                # Not this delivery's failure: its batch is rolled back and handled again,
                # which a span of its own shows. A handler's error that caused it was
                # recorded on this span by ``handling``.
                span.set_attribute("busway.rolled_back", True)
            elif error is not None:
                span.record_exception(error)
                span.set_status(trace.StatusCode.ERROR, f"{type(error).__qualname__}: {error}")
                span.set_attribute("error.type", _type_name(error))
        finally:
            context.detach(self._token)
            span.end()


class _Handling:
    """Names the handler and the attempt on the delivery's span, and records its failure."""

    __slots__ = ("_invocation", "_span")

    def __init__(self, span: trace.Span, invocation: Invocation) -> None:
        self._span = span
        self._invocation = invocation

    def __enter__(self) -> None:
        invocation = self._invocation
        self._span.set_attributes(
            {
                "busway.handler": invocation.handler.name,
                "busway.attempt": invocation.message.headers.attempt,
            }
        )

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if error is None:
            return
        failure = failure_of(error)
        if failure is not None:
            span = self._span
            handler = self._invocation.handler.name
            span.record_exception(failure, {"busway.handler": handler})
            span.set_status(trace.StatusCode.ERROR, f"{handler}: {_type_name(failure)}")
            span.set_attribute("error.type", _type_name(failure))


def _type_name(error: BaseException) -> str:
    return f"{type(error).__module__}.{type(error).__qualname__}"
