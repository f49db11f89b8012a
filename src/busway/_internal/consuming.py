"""The worker's side of the pipeline: what to do with a delivery, and with a failure.

These are the decisions; the links of the chain (``busway._internal._async.links``, and its
sync twin, generated from it) carry them out. ``Consumer`` composes each handler's chains
once, when it is made.
"""

from __future__ import annotations

import dataclasses
import logging
import traceback as traceback_module
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from busway._internal.fields import error_type, failure_fields
from busway._internal.links import AsyncReceive, Chains, Receive
from busway._internal.registry import HandlerDefinition
from busway._internal.runtime import (
    Invoke,
    Runtime,
    Step,
    attempt_of,
    kind_of,
)
from busway.channels.base import Delivery, Envelope, current_batch
from busway.errors import (
    ConversionError,
    HandlerTimeout,
    MalformedMessageError,
    NoHandlerError,
    UnreadableMessageError,
    WorkerDiedError,
)
from busway.message import (
    ATTEMPT,
    DELIVER_AT,
    EXPIRES_AT,
    ID,
    ORDERING_KEY,
    RETRY,
    ROUTE,
    SLIP,
    TARGET,
    TIMEOUT,
    TYPE,
    Headers,
    HeaderValue,
    Message,
)
from busway.recovery import DeadLetter, RetryPolicy, most_specific_policy, new_dead_letter_id
from busway.timeouts import timeout_from_header

log = logging.getLogger("busway")


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
    payload_class: type[Any] | None = None
    """The class its type header names here, when that is how its handlers were found."""


Prepared = Forward | Reject | Run


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one delivery, for the worker's counts: whether every handler succeeded,
    and how many delayed retries and dead letters its failures made."""

    ok: bool = True
    retried: int = 0
    dead_lettered: int = 0


HANDLED = Outcome()
DEAD_LETTERED = Outcome(ok=False, dead_lettered=1)


POISON = (ConversionError, MalformedMessageError)


class Consumer:
    """Handles deliveries from channels for one runtime."""

    def __init__(
        self,
        runtime: Runtime,
        channel_retries: Mapping[str, RetryPolicy],
        max_crashes: int | None = 3,
    ) -> None:
        self.runtime = runtime
        self.channel_retries = dict(channel_retries)
        self.max_crashes = max_crashes
        self.receiving, self.areceiving = _compose(self)

    # -- deciding --------------------------------------------------------------------------

    def expired(self, delivery: Delivery) -> str | None:
        """Why a delivery is dropped unseen: its time to live ended; None if it did not."""
        if delivery.unreadable is not None:
            return None  # its headers say nothing: it goes to the dead letter store
        expires_at = delivery.envelope.headers.get(EXPIRES_AT)
        if isinstance(expires_at, int | float) and expires_at < self.runtime.clock():
            return f"its time to live ended at {expires_at!r}"
        return None

    def prepare(self, delivery: Delivery) -> Prepared:
        """What to do with a delivery: forward it, reject it, or run its steps."""
        if delivery.unreadable is not None:
            unreadable = UnreadableMessageError(delivery.channel, delivery.unreadable.reason)
            return Reject(self.dead_letter(delivery, None, unreadable))
        runtime = self.runtime
        headers = delivery.envelope.headers
        try:
            if self.max_crashes is not None and delivery.crashes >= self.max_crashes:
                # Handing it out again would most likely kill this worker too.
                return Reject(self.dead_letter(delivery, None, WorkerDiedError(delivery.crashes)))
            slip = headers.get(SLIP)
            if slip:
                if not isinstance(slip, str):
                    raise MalformedMessageError(f"header {SLIP!r} is not a string")
                return self._forward(delivery, slip)
            kind = kind_of(headers)
            key = headers.get(ROUTE)
            target = headers.get(TARGET)
            if target is not None:
                definition = runtime.router.by_name.get(str(target))
                if definition is None:
                    raise MalformedMessageError(
                        f"the message is addressed to handler {target!r}, which is not "
                        "registered in this application"
                    )
                return Run(Headers(headers), [Invoke(definition)])
            if key is not None:
                steps = runtime.plan(kind, None, str(key), delivery.channel)
                what = f"routing key {key!r}"
            else:
                payload_class = runtime.router.payload_class(str(headers.get(TYPE)))
                what = f"messages of type {headers.get(TYPE)!r}"
                if payload_class is None:
                    raise MalformedMessageError(f"no handler here takes {what}")
                steps = runtime.plan(kind, payload_class, None, delivery.channel)
            if not steps:
                raise MalformedMessageError(f"no {kind.value} handler here takes {what}")
            return Run(Headers(headers), steps, payload_class if key is None else None)
        except (MalformedMessageError, NoHandlerError) as error:
            return Reject(self.dead_letter(delivery, None, error))

    def _forward(self, delivery: Delivery, slip: str) -> Forward:
        channel, _, rest = slip.partition(",")
        if channel not in self.runtime.channels:
            raise MalformedMessageError(f"the message's next channel {channel!r} is not defined")
        headers = dict(delivery.envelope.headers)
        if rest:
            headers[SLIP] = rest
        else:
            headers.pop(SLIP, None)
        return Forward(channel, Envelope(delivery.envelope.body, headers))

    def message_for(
        self,
        definition: HandlerDefinition,
        delivery: Delivery,
        headers: Headers,
        payload_class: type[Any] | None = None,
    ) -> Message[Any]:
        """The message ``definition`` is called with; ``payload_class``: the class of the
        message's type header, if known already."""
        info = definition.info
        if info.key is not None:
            cls = info.payload_type
        else:
            found = payload_class or self.runtime.router.payload_class(headers.type)
            cls = found or info.payload_type
        if cls is None:
            try:
                payload = msgspec.json.decode(delivery.envelope.body)
            except msgspec.DecodeError as error:
                raise ConversionError(f"the body is not JSON: {error}") from error
        else:
            payload = self.runtime.conversion.decode(delivery.envelope.body, cls)
        return Message(payload, headers)

    def policy_for(self, definition: HandlerDefinition, delivery: Delivery) -> RetryPolicy:
        """The most specific policy: the handler's, the bus's, the channel's, the default."""
        return most_specific_policy(
            self.runtime.retry,
            definition.info.retry,
            delivery.envelope.headers.get(RETRY),
            self.channel_retries.get(delivery.channel),
        )

    def timeout_for(
        self, definition: HandlerDefinition, delivery: Delivery, default: float | None
    ) -> float | None:
        """The most specific time limit: the handler's, the bus's, the worker's default."""
        return (
            definition.info.timeout
            or timeout_from_header(delivery.envelope.headers.get(TIMEOUT))
            or default
        )

    def retries_instantly(
        self, definition: HandlerDefinition, delivery: Delivery, error: BaseException, tries: int
    ) -> bool:
        """Whether the handler, failed ``tries`` times in a row here, runs again at once.

        Never after a time limit passed: the handler would hold its batch that long again.
        """
        policy = self.policy_for(definition, delivery)
        return (
            not isinstance(error, (*POISON, HandlerTimeout))
            and tries <= policy.instant_retries
            and policy.retries_error(error)
        )

    def delayed_retry(
        self, delivery: Delivery, definition: HandlerDefinition, error: BaseException
    ) -> tuple[str, Envelope] | None:
        """The delayed retry of a failure (the channel and envelope to send), if it has one."""
        headers = delivery.envelope.headers
        attempt = _attempts_before(headers) + 1
        policy = self.policy_for(definition, delivery)
        if not isinstance(error, POISON) and policy.should_retry(attempt, error):
            delay = policy.delay(attempt)
            retry_headers = dict(headers)
            retry_headers[ATTEMPT] = attempt
            retry_headers[TARGET] = definition.name
            retry_headers[DELIVER_AT] = self.runtime.clock() + delay
            log.warning(
                "handler %s failed on attempt %d (%s: %s); retrying in %.3fs",
                definition.name,
                attempt,
                type(error).__name__,
                error,
                delay,
                extra=failure_fields(
                    delivery.channel, definition.name, headers.get(ID), attempt, error
                ),
            )
            return delivery.channel, Envelope(delivery.envelope.body, retry_headers)
        return None

    def holds_retry(self, delivery: Delivery) -> bool:
        """Whether ``delivery``'s delayed retry waits in the worker: a keyed message on a
        channel whose order a message sent again would break."""
        channel = self.runtime.channels.get(delivery.channel)
        return (
            channel is not None
            and channel.holds_keyed_retries
            and delivery.envelope.headers.get(ORDERING_KEY) is not None
        )

    def dead_letter(
        self, delivery: Delivery, definition: HandlerDefinition | None, error: BaseException
    ) -> DeadLetter:
        headers = dict(delivery.envelope.headers)
        if definition is not None:
            headers[TARGET] = definition.name
        attempts = _attempts_before(delivery.envelope.headers) + 1
        letter_id = new_dead_letter_id()
        log.error(
            "message %s on channel %r goes to the dead letter store after %d attempt(s): %s: %s",
            headers.get(ID),
            delivery.channel,
            attempts,
            type(error).__name__,
            error,
            extra=failure_fields(
                delivery.channel,
                definition.name if definition else None,
                headers.get(ID),
                attempts,
                error,
                letter_id,
            ),
        )
        return DeadLetter(
            id=letter_id,
            channel=delivery.channel,
            handler=definition.name if definition else None,
            body=delivery.envelope.body,
            headers=headers,
            error_type=error_type(error),
            error_message=str(error),
            traceback="".join(traceback_module.format_exception(error)),
            attempts=attempts,
            failed_at=self.runtime.clock(),
        )


def _compose(consumer: Consumer) -> tuple[Receive, AsyncReceive]:
    """Each handler's chains, composed once from the links that apply to it, and the chain
    of a worker's deliveries on each path."""
    from busway._internal._async import links as alinks
    from busway._internal._sync import links

    for definition in consumer.runtime.router.by_name.values():
        send = links.compose(consumer, definition, links.SEND)
        definition.chains = Chains(
            links.compose(consumer, definition, links.CONSUME),
            alinks.compose(consumer, definition, alinks.CONSUME),
            send,
            alinks.compose(consumer, definition, alinks.SEND),
            direct=isinstance(send, links.Calling),
        )
    return links.receiving(consumer), alinks.receiving(consumer)


MAX_ATTEMPTS = 1_000_000


def _attempts_before(headers: Mapping[str, HeaderValue]) -> int:
    """The attempt count a message carries, read within bounds.

    A count out of reason in a malformed header must neither buy a message endless retries
    (a negative count) nor keep it out of the dead letter store (a count too large for its
    ``attempts`` column): then the message would block its channel for good.
    """
    return min(max(attempt_of(headers), 0), MAX_ATTEMPTS)


def note_forwarded() -> None:
    """Tell the batch in hand, if any, that its current message was only sent on."""
    batch = current_batch.get()
    if batch is not None and batch.current is not None:
        batch.forwarded.add(batch.current)


def isolate_siblings(delivery: Delivery, steps: list[Step]) -> Delivery:
    """``delivery``, isolated if it runs more than one handler: one subscriber's failure must
    not re-run its siblings."""
    if not delivery.isolated and sum(isinstance(step, Invoke) for step in steps) > 1:
        return isolated(delivery)
    return delivery


def isolated(delivery: Delivery) -> Delivery:
    """``delivery`` with a savepoint of its own for each handler."""
    return delivery if delivery.isolated else dataclasses.replace(delivery, isolated=True)


def rehop(envelope: Envelope, extra: Mapping[str, HeaderValue]) -> Envelope:
    headers = dict(envelope.headers)
    headers.pop(SLIP, None)
    headers.update(extra)
    return Envelope(envelope.body, headers)
