"""The message pipeline: make a message, decide where it goes, run it or queue it.

Planning (``new_message``, ``plan``, ``prepare``, ``decide_failure``) is shared by both front
doors; only the I/O edges have a sync and an asyncio version.
"""

from __future__ import annotations

import logging
import traceback as traceback_module
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from busway._context import current_message
from busway._internal.bridge import run_coroutine
from busway._internal.registry import HandlerDefinition
from busway._internal.router import Router
from busway.channels.base import BatchRollback, Channel, Delivery, Envelope
from busway.conversion import JSON, Conversion, type_name
from busway.errors import ConversionError, MalformedMessageError, NoHandlerError
from busway.handlers import Kind
from busway.interceptors import Invocation
from busway.message import (
    ATTEMPT,
    CAUSATION_ID,
    CONTENT_TYPE,
    CORRELATION_ID,
    DELIVER_AT,
    ID,
    KIND,
    ROUTE,
    SLIP,
    TARGET,
    TIMESTAMP,
    TYPE,
    Headers,
    HeaderValue,
    Message,
    uuid7,
)
from busway.recovery import DeadLetter, DeadLetterStore, RetryPolicy, new_dead_letter_id

if TYPE_CHECKING:
    from busway.gateways import Gateway

log = logging.getLogger("busway")


@dataclass(frozen=True, slots=True)
class Invoke:
    definition: HandlerDefinition


@dataclass(frozen=True, slots=True)
class Enqueue:
    channel: str
    headers: Mapping[str, HeaderValue]


Step = Invoke | Enqueue


@dataclass(frozen=True, slots=True)
class Forward:
    """The message is on a pipeline hop: pass it to the next channel unchanged."""

    channel: str
    envelope: Envelope


@dataclass(frozen=True, slots=True)
class Reject:
    """The message cannot be dispatched at all: straight to the dead letter store."""

    letter: DeadLetter


@dataclass(frozen=True, slots=True)
class Run:
    headers: Headers
    steps: list[Step]


Prepared = Forward | Reject | Run


class Observer:
    """Sees every message leave a gateway and every envelope sent to a channel."""

    def sent(self, gateway: type[Gateway], message: Message[Any]) -> None:
        pass

    def enqueued(self, channel: str, envelope: Envelope) -> None:
        pass


class Runtime:
    def __init__(
        self,
        router: Router,
        conversion: Conversion,
        channels: dict[str, Channel],
        clock: Callable[[], float],
        dead_letters: DeadLetterStore,
        retry: RetryPolicy,
    ) -> None:
        self.router = router
        self.conversion = conversion
        self.channels = channels
        self.clock = clock
        self.dead_letters = dead_letters
        self.retry = retry
        self.observers: list[Observer] = []

    # -- making messages -------------------------------------------------------------------

    def new_message(
        self,
        kind: Kind,
        payload: Any,
        key: str | None,
        headers: Mapping[str, HeaderValue] | None,
        delay: float | timedelta | None,
    ) -> Message[Any]:
        parent = current_message.get()
        message_id = uuid7()
        data: dict[str, HeaderValue] = {}
        if parent is not None:
            data.update(parent.headers.user_headers())
            data[CORRELATION_ID] = parent.headers.correlation_id
            data[CAUSATION_ID] = parent.headers.id
        else:
            data[CORRELATION_ID] = message_id
        if headers:
            for name, value in headers.items():
                if value is not None and not name.startswith("busway."):
                    data[name] = value
        now = self.clock()
        data[ID] = message_id
        data[TIMESTAMP] = now
        data[TYPE] = type_name(type(payload))
        converter = self.conversion.converter_for(type(payload))
        data[CONTENT_TYPE] = converter.content_type if converter else JSON
        data[KIND] = kind.value
        if key is not None:
            data[ROUTE] = key
        if delay:
            seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
            data[DELIVER_AT] = now + seconds
        return Message(payload, Headers(data))

    def envelope(self, message: Message[Any], extra: Mapping[str, HeaderValue]) -> Envelope:
        body, _ = self.conversion.encode(message.payload)
        headers = message.headers.merge(extra) if extra else message.headers
        return Envelope(body, headers.as_dict())

    # -- routing ---------------------------------------------------------------------------

    def targets(
        self, kind: Kind, payload_type: type[Any] | None, key: str | None
    ) -> list[HandlerDefinition]:
        if key is not None:
            found = self.router.by_key(kind, key)
            what = f"routing key {key!r}"
        else:
            assert payload_type is not None
            found = self.router.by_type(kind, payload_type)
            what = type_name(payload_type)
        if not found and kind is not Kind.EVENT:
            raise NoHandlerError(
                f"no {kind.value} handler takes {what}; add a @{kind.value}_handler for it "
                "to Messaging(handlers=[...])"
            )
        return found

    def plan(
        self,
        kind: Kind,
        payload_type: type[Any] | None,
        key: str | None,
        here: str | None = None,
    ) -> list[Step]:
        """The steps that dispatch a message the way the plain bus does.

        ``here`` is the channel the message was consumed from: a handler marked for that
        very channel runs at once instead of being queued again.
        """
        steps: list[Step] = []
        for definition in self.targets(kind, payload_type, key):
            channels = definition.info.channels
            if channels and channels[0] != here:
                steps.append(Enqueue(channels[0], _hop(channels[1:], definition.name)))
            elif channels and len(channels) > 1:
                steps.append(Enqueue(channels[1], _hop(channels[2:], definition.name)))
            else:
                steps.append(Invoke(definition))
        return steps

    def gateway_plan(self, channels: tuple[str, ...]) -> list[Step]:
        return [Enqueue(channels[0], _hop(channels[1:], None))]

    # -- front doors -----------------------------------------------------------------------

    def dispatch(
        self,
        gateway: type[Gateway],
        kind: Kind,
        payload: Any,
        key: str | None,
        headers: Mapping[str, HeaderValue] | None,
        delay: float | timedelta | None,
        channels: tuple[str, ...],
    ) -> Any:
        message = self.new_message(kind, payload, key, headers, delay)
        for observer in self.observers:
            observer.sent(gateway, message)
        steps = self.gateway_plan(channels) if channels else self.plan(kind, type(payload), key)
        result = None
        for step in steps:
            if isinstance(step, Enqueue):
                self.send(step.channel, self.envelope(message, step.headers))
            else:
                result = self.invoke(step.definition, message)
        return result

    async def adispatch(
        self,
        gateway: type[Gateway],
        kind: Kind,
        payload: Any,
        key: str | None,
        headers: Mapping[str, HeaderValue] | None,
        delay: float | timedelta | None,
        channels: tuple[str, ...],
    ) -> Any:
        message = self.new_message(kind, payload, key, headers, delay)
        for observer in self.observers:
            observer.sent(gateway, message)
        steps = self.gateway_plan(channels) if channels else self.plan(kind, type(payload), key)
        result = None
        for step in steps:
            if isinstance(step, Enqueue):
                await self.asend(step.channel, self.envelope(message, step.headers))
            else:
                result = await self.ainvoke(step.definition, message)
        return result

    # -- I/O edges -------------------------------------------------------------------------

    def send(self, channel: str, envelope: Envelope) -> None:
        self.channels[channel].send(envelope)
        for observer in self.observers:
            observer.enqueued(channel, envelope)

    async def asend(self, channel: str, envelope: Envelope) -> None:
        await self.channels[channel].asend(envelope)
        for observer in self.observers:
            observer.enqueued(channel, envelope)

    def invoke(
        self, definition: HandlerDefinition, message: Message[Any], delivery: Delivery | None = None
    ) -> Any:
        invocation = Invocation(message, definition.info, delivery)
        token = current_message.set(message)
        try:
            if definition.info.is_coroutine:
                return run_coroutine(self._acall(definition, invocation))
            if definition.chain:
                return definition.chain.call(invocation, lambda: _call(definition, invocation))
            return _call(definition, invocation)
        finally:
            current_message.reset(token)

    async def ainvoke(
        self, definition: HandlerDefinition, message: Message[Any], delivery: Delivery | None = None
    ) -> Any:
        invocation = Invocation(message, definition.info, delivery)
        token = current_message.set(message)
        try:
            return await self._acall(definition, invocation)
        finally:
            current_message.reset(token)

    async def _acall(self, definition: HandlerDefinition, invocation: Invocation) -> Any:
        async def call() -> Any:
            result = _call(definition, invocation)
            if definition.info.is_coroutine:
                result = await result
            return result

        if definition.chain:
            return await definition.chain.acall(invocation, call)
        return await call()

    # -- consuming -------------------------------------------------------------------------

    def prepare(self, delivery: Delivery) -> Prepared:
        """What to do with a delivery: forward it, reject it, or run its steps."""
        headers = delivery.envelope.headers
        try:
            slip = headers.get(SLIP)
            if slip:
                if not isinstance(slip, str):
                    raise MalformedMessageError(f"header {SLIP!r} is not a string")
                return self._forward(delivery, slip)
            kind = _kind(headers)
            key = headers.get(ROUTE)
            target = headers.get(TARGET)
            if target is not None:
                definition = self.router.by_name.get(str(target))
                if definition is None:
                    raise MalformedMessageError(
                        f"the message is addressed to handler {target!r}, which is not "
                        "registered in this application"
                    )
                return Run(Headers(headers), [Invoke(definition)])
            if key is not None:
                steps = self.plan(kind, None, str(key), delivery.channel)
                what = f"routing key {key!r}"
            else:
                payload_class = self.router.payload_class(str(headers.get(TYPE)))
                what = f"messages of type {headers.get(TYPE)!r}"
                if payload_class is None:
                    raise MalformedMessageError(f"no handler here takes {what}")
                steps = self.plan(kind, payload_class, None, delivery.channel)
            if not steps:
                raise MalformedMessageError(f"no {kind.value} handler here takes {what}")
            return Run(Headers(headers), steps)
        except (MalformedMessageError, NoHandlerError) as error:
            return Reject(self.dead_letter(delivery, None, error))

    def _forward(self, delivery: Delivery, slip: str) -> Forward:
        channel, _, rest = slip.partition(",")
        if channel not in self.channels:
            raise MalformedMessageError(f"the message's next channel {channel!r} is not defined")
        headers = dict(delivery.envelope.headers)
        if rest:
            headers[SLIP] = rest
        else:
            headers.pop(SLIP, None)
        return Forward(channel, Envelope(delivery.envelope.body, headers))

    def message_for(
        self, definition: HandlerDefinition, delivery: Delivery, headers: Headers
    ) -> Message[Any]:
        info = definition.info
        if info.key is not None:
            cls = info.payload_type
        else:
            cls = self.router.payload_class(headers.type) or info.payload_type
        if cls is None:
            try:
                payload = msgspec.json.decode(delivery.envelope.body)
            except msgspec.DecodeError as error:
                raise ConversionError(f"the body is not JSON: {error}") from error
        else:
            payload = self.conversion.decode(delivery.envelope.body, cls)
        return Message(payload, headers)

    def decide_failure(
        self, delivery: Delivery, definition: HandlerDefinition, error: BaseException
    ) -> tuple[str, Envelope] | DeadLetter:
        """A retry (the channel and envelope to send) or a dead letter."""
        headers = delivery.envelope.headers
        attempt = _attempt(headers) + 1
        poison = isinstance(error, ConversionError | MalformedMessageError)
        if not poison and self.retry.should_retry(attempt, error):
            delay = self.retry.delay(attempt)
            retry_headers = dict(headers)
            retry_headers[ATTEMPT] = attempt
            retry_headers[TARGET] = definition.name
            retry_headers[DELIVER_AT] = self.clock() + delay
            log.warning(
                "handler %s failed on attempt %d (%s: %s); retrying in %.3fs",
                definition.name,
                attempt,
                type(error).__name__,
                error,
                delay,
            )
            return delivery.channel, Envelope(delivery.envelope.body, retry_headers)
        return self.dead_letter(delivery, definition, error)

    def dead_letter(
        self, delivery: Delivery, definition: HandlerDefinition | None, error: BaseException
    ) -> DeadLetter:
        headers = dict(delivery.envelope.headers)
        if definition is not None:
            headers[TARGET] = definition.name
        attempts = _attempt(delivery.envelope.headers) + 1
        log.error(
            "message %s on channel %r goes to the dead letter store after %d attempt(s): %s: %s",
            headers.get(ID),
            delivery.channel,
            attempts,
            type(error).__name__,
            error,
        )
        return DeadLetter(
            id=new_dead_letter_id(),
            channel=delivery.channel,
            handler=definition.name if definition else None,
            body=delivery.envelope.body,
            headers=headers,
            error_type=f"{type(error).__module__}.{type(error).__qualname__}",
            error_message=str(error),
            traceback="".join(traceback_module.format_exception(error)),
            attempts=attempts,
            failed_at=self.clock(),
        )

    def receive(self, delivery: Delivery) -> bool:
        """Handle one delivery; True when every handler succeeded."""
        prepared = self.prepare(delivery)
        if isinstance(prepared, Forward):
            self.send(prepared.channel, prepared.envelope)
            return True
        if isinstance(prepared, Reject):
            self.dead_letters.add(prepared.letter)
            return False
        if not delivery.isolated and _invocations(prepared.steps) > 1:
            delivery.isolated = True  # one subscriber's failure must not re-run its siblings
        ok = True
        for step in prepared.steps:
            if isinstance(step, Enqueue):
                self.send(step.channel, _rehop(delivery.envelope, step.headers))
                continue
            try:
                if delivery.known_failure is not None:
                    raise delivery.known_failure
                message = self.message_for(step.definition, delivery, prepared.headers)
                self.invoke(step.definition, message, delivery)
            except BatchRollback:
                raise
            except Exception as error:
                ok = False
                outcome = self.decide_failure(delivery, step.definition, error)
                if isinstance(outcome, DeadLetter):
                    self.dead_letters.add(outcome)
                else:
                    self.send(*outcome)
        return ok

    async def areceive(self, delivery: Delivery) -> bool:
        prepared = self.prepare(delivery)
        if isinstance(prepared, Forward):
            await self.asend(prepared.channel, prepared.envelope)
            return True
        if isinstance(prepared, Reject):
            await self.dead_letters.aadd(prepared.letter)
            return False
        if not delivery.isolated and _invocations(prepared.steps) > 1:
            delivery.isolated = True  # one subscriber's failure must not re-run its siblings
        ok = True
        for step in prepared.steps:
            if isinstance(step, Enqueue):
                await self.asend(step.channel, _rehop(delivery.envelope, step.headers))
                continue
            try:
                if delivery.known_failure is not None:
                    raise delivery.known_failure
                message = self.message_for(step.definition, delivery, prepared.headers)
                await self.ainvoke(step.definition, message, delivery)
            except BatchRollback:
                raise
            except Exception as error:
                ok = False
                outcome = self.decide_failure(delivery, step.definition, error)
                if isinstance(outcome, DeadLetter):
                    await self.dead_letters.aadd(outcome)
                else:
                    await self.asend(*outcome)
        return ok


def _call(definition: HandlerDefinition, invocation: Invocation) -> Any:
    arguments = [resolve(invocation) for resolve in definition.resolvers]
    if definition.keyword_resolvers:
        keywords = {name: resolve(invocation) for name, resolve in definition.keyword_resolvers}
        return definition.function(invocation.message.payload, *arguments, **keywords)
    return definition.function(invocation.message.payload, *arguments)


def _invocations(steps: list[Step]) -> int:
    return sum(isinstance(step, Invoke) for step in steps)


def _hop(rest: tuple[str, ...], target: str | None) -> dict[str, HeaderValue]:
    headers: dict[str, HeaderValue] = {}
    if rest:
        headers[SLIP] = ",".join(rest)
    if target is not None:
        headers[TARGET] = target
    return headers


def _rehop(envelope: Envelope, extra: Mapping[str, HeaderValue]) -> Envelope:
    headers = dict(envelope.headers)
    headers.pop(SLIP, None)
    headers.update(extra)
    return Envelope(envelope.body, headers)


def _kind(headers: Mapping[str, HeaderValue]) -> Kind:
    value = headers.get(KIND)
    try:
        return Kind(str(value))
    except ValueError:
        raise MalformedMessageError(
            f"header {KIND!r} is {value!r}; expected 'command', 'event' or 'query'"
        ) from None


def _attempt(headers: Mapping[str, HeaderValue]) -> int:
    value = headers.get(ATTEMPT, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
