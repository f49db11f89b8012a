"""The message pipeline: make a message, decide where it goes, run it or queue it.

Planning (``new_message``, ``plan``, and a gateway's ``route`` for each type of message, found
once) is shared by both front doors; only the I/O edges have a sync and an asyncio version. The
worker's side lives in ``consuming``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from busway._context import current_message
from busway._internal.bridge import run_coroutine
from busway._internal.instruments import Instruments
from busway._internal.preparation import Preparation
from busway._internal.registry import HandlerDefinition
from busway._internal.router import Router
from busway._internal.time_limits import call_def_handler
from busway.channels.base import Channel, Delivery, Envelope
from busway.conversion import JSON, Conversion, type_name
from busway.errors import MalformedMessageError, NoHandlerError
from busway.handlers import Kind
from busway.interceptors import Invocation
from busway.message import (
    ATTEMPT,
    CAUSATION_ID,
    CONTENT_TYPE,
    CORRELATION_ID,
    DELIVER_AT,
    EXPIRES_AT,
    ID,
    KIND,
    ORDERING_KEY,
    PRIORITY,
    RETRY,
    ROUTE,
    SLIP,
    TARGET,
    TIMEOUT,
    TIMESTAMP,
    TYPE,
    Headers,
    HeaderValue,
    Message,
    uuid7,
)
from busway.ordering import KeyOf, declared_key, ordering_key_value, priority_value
from busway.recovery import DeadLetterStore, RetryPolicy

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
class Route:
    """What every message a gateway sends of one kind and payload type (or routing key) has in
    common, decided at the first of them."""

    kind: Kind
    headers: Mapping[str, HeaderValue]
    """Type, content type, kind, routing key, and the gateway's retry policy and time limit."""
    steps: tuple[Step, ...]
    direct: HandlerDefinition | None
    """The handler to call at once, when calling it is all the steps do."""
    ordering: KeyOf | None = None
    """The payload type's declared ordering key (``@ordered_by``), if any."""


@dataclass(frozen=True, slots=True)
class Call:
    """A handler's pipeline to run with a message, under a time limit."""

    definition: HandlerDefinition
    message: Message[Any]
    delivery: Delivery | None


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
        *,
        command_failures: str | None = None,
        preparation: Preparation | None = None,
        instruments: Instruments | None = None,
    ) -> None:
        self.router = router
        self.conversion = conversion
        self.channels = channels
        self.clock = clock
        self.dead_letters = dead_letters
        self.retry = retry
        self.observers: list[Observer] = []
        self._types: dict[type[Any], tuple[str, str]] = {}
        self._plans: dict[tuple[Kind, type[Any] | None, str | None, str | None], list[Step]] = {}
        self.command_failures = command_failures
        """The channel where commands whose synchronous handling failed go, if any."""
        self.preparation = preparation or Preparation(enabled=False)
        """What is set up at its first use (``Messaging(auto_setup=...)``)."""
        self.instruments = instruments or Instruments()
        """What traces and counts messages (``Messaging(instruments=...)``); usually none."""

    # -- making messages -------------------------------------------------------------------

    def new_message(
        self,
        kind: Kind,
        payload: Any,
        key: str | None,
        headers: Mapping[str, HeaderValue] | None,
        delay: float | timedelta | None,
        retry: RetryPolicy | None = None,
        ttl: float | timedelta | None = None,
        handler_timeout: float | None = None,
    ) -> Message[Any]:
        fixed = self.fixed_headers(kind, type(payload), key, retry, handler_timeout)
        return self.routed_message(fixed, payload, headers, delay, ttl)

    def routed_message(
        self,
        fixed: Mapping[str, HeaderValue],
        payload: Any,
        headers: Mapping[str, HeaderValue] | None,
        delay: float | timedelta | None,
        ttl: float | timedelta | None,
        ordering_key: Any = None,
        priority: int | None = None,
    ) -> Message[Any]:
        parent = current_message.get()
        message_id = uuid7()
        if parent is None:
            data: dict[str, HeaderValue] = {CORRELATION_ID: message_id}
        else:
            data = parent.headers.user_headers()
            data[CORRELATION_ID] = parent.headers.correlation_id
            data[CAUSATION_ID] = parent.headers.id
        if headers:
            for name, value in headers.items():
                if value is not None and not name.startswith("busway."):
                    data[name] = value
        now = self.clock()
        data[ID] = message_id
        data[TIMESTAMP] = now
        data.update(fixed)
        if delay:
            data[DELIVER_AT] = now + _seconds(delay)
        if ttl:
            data[EXPIRES_AT] = now + _seconds(ttl)
        if ordering_key is not None:
            data[ORDERING_KEY] = ordering_key_value(ordering_key)
        if priority is not None:
            data[PRIORITY] = priority_value(priority)
        return Message(payload, Headers._owning(data))

    def fixed_headers(
        self,
        kind: Kind,
        payload_type: type[Any],
        key: str | None,
        retry: RetryPolicy | None,
        handler_timeout: float | None,
        priority: int | None = None,
    ) -> dict[str, HeaderValue]:
        """The headers every message of this kind, payload type and routing key carries,
        sent through a gateway with this retry policy and time limit."""
        data: dict[str, HeaderValue] = {}
        data[TYPE], data[CONTENT_TYPE] = self._type_headers(payload_type)
        data[KIND] = kind.value
        if key is not None:
            data[ROUTE] = key
        if retry is not None:
            data[RETRY] = retry.to_header()
        if handler_timeout is not None:
            data[TIMEOUT] = handler_timeout
        if priority is not None:
            data[PRIORITY] = priority
        return data

    def _type_headers(self, cls: type[Any]) -> tuple[str, str]:
        known = self._types.get(cls)
        if known is None:
            converter = self.conversion.converter_for(cls)
            known = self._types[cls] = (
                type_name(cls),
                converter.content_type if converter else JSON,
            )
        return known

    def failed(self, message: Message[Any], definition: HandlerDefinition) -> Envelope:
        """A command whose synchronous handling failed, addressed to its handler for later."""
        return self.envelope(message, {TARGET: definition.name, ATTEMPT: 1})

    def envelope(self, message: Message[Any], extra: Mapping[str, HeaderValue]) -> Envelope:
        body, _ = self.conversion.encode(message.payload)
        return Envelope(body, message.headers.as_dict(extra))

    # -- routing ---------------------------------------------------------------------------

    def targets(
        self, kind: Kind, payload_type: type[Any] | None, key: str | None
    ) -> list[HandlerDefinition]:
        if key is not None:
            found = self.router.by_key(kind, key)
        else:
            assert payload_type is not None
            found = self.router.by_type(kind, payload_type)
        if not found and kind is not Kind.EVENT:
            what = (
                f"routing key {key!r}"
                if key is not None or payload_type is None
                else type_name(payload_type)
            )
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
        cache_key = (kind, payload_type, key, here)
        steps = self._plans.get(cache_key)
        if steps is None:
            steps = self._plans[cache_key] = self._plan(kind, payload_type, key, here)
        return steps

    def _plan(
        self, kind: Kind, payload_type: type[Any] | None, key: str | None, here: str | None
    ) -> list[Step]:
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

    def route(
        self,
        kind: Kind,
        payload_type: type[Any],
        key: str | None,
        channels: tuple[str, ...],
        retry: RetryPolicy | None,
        handler_timeout: float | None,
        priority: int | None = None,
    ) -> Route:
        """Where a gateway with these channels, retry policy and time limit sends messages of
        this kind, payload type and routing key, and the headers they all carry."""
        steps = tuple(
            self.gateway_plan(channels) if channels else self.plan(kind, payload_type, key)
        )
        direct = None
        if len(steps) == 1 and isinstance(steps[0], Invoke) and steps[0].definition.chains.direct:
            direct = steps[0].definition
        headers = self.fixed_headers(kind, payload_type, key, retry, handler_timeout, priority)
        return Route(kind, headers, steps, direct, declared_key(payload_type))

    # -- front doors -----------------------------------------------------------------------

    # -- I/O edges -------------------------------------------------------------------------

    def send(self, channel: str, envelope: Envelope) -> None:
        self.preparation.sending(channel)
        if self.instruments:
            with self.instruments.sending(channel, envelope) as envelope:
                self.channels[channel].send(envelope)
        else:
            self.channels[channel].send(envelope)
        for observer in self.observers:
            observer.enqueued(channel, envelope)

    async def asend(self, channel: str, envelope: Envelope) -> None:
        await self.preparation.asending(channel)
        if self.instruments:
            with self.instruments.sending(channel, envelope) as envelope:
                await self.channels[channel].asend(envelope)
        else:
            await self.channels[channel].asend(envelope)
        for observer in self.observers:
            observer.enqueued(channel, envelope)

    def invoke(
        self, definition: HandlerDefinition, message: Message[Any], delivery: Delivery | None = None
    ) -> Any:
        invocation = Invocation(message, definition.info, delivery)
        if delivery is not None and self.instruments:
            with self.instruments.handling(invocation):
                return self._invoke(definition, invocation)
        return self._invoke(definition, invocation)

    def _invoke(self, definition: HandlerDefinition, invocation: Invocation) -> Any:
        token = current_message.set(invocation.message)
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
            if delivery is not None and self.instruments:
                with self.instruments.handling(invocation):
                    return await self._acall(definition, invocation)
            return await self._acall(definition, invocation)
        finally:
            current_message.reset(token)

    async def _acall(self, definition: HandlerDefinition, invocation: Invocation) -> Any:
        chain = definition.chain

        async def call() -> Any:
            if definition.info.is_coroutine:
                return await _call(definition, invocation)
            if chain.sync_unit:
                return call_def_handler(
                    chain.call_sync_unit, invocation, lambda: _call(definition, invocation)
                )
            return call_def_handler(_call, definition, invocation)

        if chain:
            return await chain.acall(invocation, call)
        return await call()


def _call(definition: HandlerDefinition, invocation: Invocation) -> Any:
    arguments = [resolve(invocation) for resolve in definition.resolvers]
    if definition.keyword_resolvers:
        keywords = {name: resolve(invocation) for name, resolve in definition.keyword_resolvers}
        return definition.function(invocation.message.payload, *arguments, **keywords)
    return definition.function(invocation.message.payload, *arguments)


def _hop(rest: tuple[str, ...], target: str | None) -> dict[str, HeaderValue]:
    headers: dict[str, HeaderValue] = {}
    if rest:
        headers[SLIP] = ",".join(rest)
    if target is not None:
        headers[TARGET] = target
    return headers


def _seconds(duration: float | timedelta) -> float:
    return duration.total_seconds() if isinstance(duration, timedelta) else float(duration)


_KINDS: dict[HeaderValue, Kind] = {kind.value: kind for kind in Kind}


def kind_of(headers: Mapping[str, HeaderValue]) -> Kind:
    value = headers.get(KIND)
    try:
        return _KINDS[value]
    except (KeyError, TypeError):  # TypeError: an unhashable value from a malformed header
        raise MalformedMessageError(
            f"header {KIND!r} is {value!r}; expected 'command', 'event' or 'query'"
        ) from None


def attempt_of(headers: Mapping[str, HeaderValue]) -> int:
    value = headers.get(ATTEMPT, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
