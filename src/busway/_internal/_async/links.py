"""The links of the chain every message goes through, and their one order, ``LINKS``.

Each link is a small class that does its part and calls the next one (``inner``), or not;
each handler's chains are composed once, at start-up, from the links that apply to it
(``compose``). The decisions are ``Consumer``'s (``busway._internal.consuming``) and
``RetryPolicy``'s; the links carry them out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any, ClassVar

from busway._internal import time_limits
from busway._internal.consuming import (
    DEAD_LETTERED,
    HANDLED,
    Consumer,
    Forward,
    Outcome,
    Reject,
    isolate_siblings,
    isolated,
    note_forwarded,
    rehop,
)
from busway._internal.links import AsyncLink, AsyncReceive, Handling, worker_stopping
from busway._internal.registry import HandlerDefinition
from busway._internal.runtime import Call, Enqueue, Runtime
from busway.channels.base import BatchRollback, Delivery, MessageReturned
from busway.errors import ConversionError, SetupRequired
from busway.handlers import Kind
from busway.message import ID
from busway.recovery import DeadLetter

log = logging.getLogger("busway")

CONSUME, SEND = "consume", "send"
"""The two paths: a worker consuming a message from a channel, a gateway sending it."""

PASSING = (BatchRollback, SetupRequired, MessageReturned)
"""Not a handler's failure: the channel redoes its batch, or a missing table fails every
message alike. No link deals with them."""


class TimeToLive:
    """A delivery that outlived its time to live is dropped, before anything else sees it."""

    def __init__(self, consumer: Consumer, inner: AsyncReceive) -> None:
        self.consumer = consumer
        self.inner = inner

    async def areceive(self, delivery: Delivery, default_timeout: float | None) -> Outcome:
        reason = self.consumer.expired(delivery)
        if reason is None:
            return await self.inner.areceive(delivery, default_timeout)
        log.warning("message %s dropped: %s", delivery.envelope.headers.get(ID), reason)
        return HANDLED


class Routing:
    """Where the chain reaches the delivery's handlers: the message is forwarded, rejected,
    sent on to their channels, or handed to each handler's own chain."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer

    async def areceive(self, delivery: Delivery, default_timeout: float | None) -> Outcome:
        consumer = self.consumer
        runtime = consumer.runtime
        prepared = consumer.prepare(delivery)
        if isinstance(prepared, Forward):
            note_forwarded()
            try:
                await runtime.asend(prepared.channel, prepared.envelope)
            except ConversionError as unsendable:  # it can never travel there: poison
                await _adead_letter(runtime, consumer.dead_letter(delivery, None, unsendable))
                return DEAD_LETTERED
            return HANDLED
        if isinstance(prepared, Reject):
            await _adead_letter(runtime, prepared.letter)
            return DEAD_LETTERED
        delivery = isolate_siblings(delivery, prepared.steps)
        known = delivery.known_failure  # met the first time: the first handler is not run again
        ok, retried, dead_lettered = True, 0, 0
        for step in prepared.steps:
            if isinstance(step, Enqueue):
                await runtime.asend(step.channel, rehop(delivery.envelope, step.headers))
                continue
            definition = step.definition
            handling = Handling(
                definition,
                delivery=delivery,
                headers=prepared.headers,
                payload_class=prepared.payload_class,
                default_timeout=default_timeout,
                known_failure=known,
            )
            known = None
            await definition.chains.aconsume.ainvoke(handling)
            retried += handling.retried
            if handling.failure is not None:
                ok = False
                dead_lettered += handling.dead_lettered
        return Outcome(ok, retried, dead_lettered)


class Chained:
    """A link of a handler's chain, on the paths it names."""

    paths: ClassVar[tuple[str, ...]] = (CONSUME,)

    def __init__(self, consumer: Consumer, inner: AsyncLink) -> None:
        self.consumer = consumer
        self.inner = inner

    @classmethod
    def applies_to(cls, consumer: Consumer, definition: HandlerDefinition, path: str) -> bool:
        return path in cls.paths

    async def ainvoke(self, handling: Handling) -> Any:
        return await self.inner.ainvoke(handling)


class DeadLettering(Chained):
    """A failure for good goes to the dead letter store, with the message and the error."""

    async def ainvoke(self, handling: Handling) -> Any:
        try:
            return await self.inner.ainvoke(handling)
        except PASSING:
            raise
        except Exception as error:
            handling.failure = error
            delivery = handling.delivery
            assert delivery is not None
            letter = self.consumer.dead_letter(delivery, handling.definition, error)
            handling.dead_lettered = True
            await _adead_letter(self.consumer.runtime, letter, delivery.repeated)
            return None


class DelayedRetries(Chained):
    """A failure the policy retries later goes back to its channel, addressed to its
    handler and due after the policy's delay (Dramatiq's ``Retries`` middleware). On a
    channel whose order that would break (``Channel.holds_keyed_retries``), a keyed message
    waits the delay in the worker instead, and is tried again there: the later messages of
    its key do not overtake it. A worker told to stop meanwhile gives the message back, to
    its place, for the next worker to try again."""

    async def ainvoke(self, handling: Handling) -> Any:
        while True:
            try:
                return await self.inner.ainvoke(handling)
            except PASSING:
                raise
            except Exception as error:
                delivery = handling.delivery
                assert delivery is not None
                retry = self.consumer.delayed_retry(delivery, handling.definition, error)
                if retry is None:
                    raise
                runtime = self.consumer.runtime
                held = self.consumer.holds_retry(delivery)
                if not held:
                    handling.failure = error
                    await runtime.asend(*retry)
                handling.retried += 1
                if runtime.instruments and not delivery.repeated:  # told once, not per redo
                    runtime.instruments.retried(delivery, handling.definition.name, error)
                if not held:
                    return None
                envelope = retry[1]
                if await _await_retry(max(0.0, (envelope.deliver_at or 0.0) - runtime.clock())):
                    raise MessageReturned from error
                handling.delivery = isolated(dataclasses.replace(delivery, envelope=envelope))


async def _await_retry(seconds: float) -> bool:
    """Wait ``seconds`` for a retry held in the worker; whether the worker was told to stop
    meanwhile."""
    stopping = worker_stopping.get()
    if stopping is None:
        await asyncio.sleep(seconds)
        return False
    return await stopping.apause(seconds)


class FailedCommands(Chained):
    """A command whose handling failed where it was sent goes on to
    ``Messaging(command_failures=...)``, addressed to its handler; the error goes on too."""

    paths = (SEND,)

    @classmethod
    def applies_to(cls, consumer: Consumer, definition: HandlerDefinition, path: str) -> bool:
        return (
            path in cls.paths
            and definition.info.kind is Kind.COMMAND
            and consumer.runtime.command_failures is not None
        )

    async def ainvoke(self, handling: Handling) -> Any:
        try:
            return await self.inner.ainvoke(handling)
        except Exception:
            runtime = self.consumer.runtime
            failures = runtime.command_failures
            assert failures is not None and handling.message is not None
            await runtime.asend(failures, runtime.failed(handling.message, handling.definition))
            raise


class InstantRetries(Chained):
    """A failure the policy retries at once runs the rest of the chain again, each try in
    a savepoint of its own."""

    async def ainvoke(self, handling: Handling) -> Any:
        tries = 0
        while True:
            try:
                known, handling.known_failure = handling.known_failure, None
                if known is not None:
                    raise known
                return await self.inner.ainvoke(handling)
            except PASSING:
                raise
            except Exception as error:
                delivery = handling.delivery
                assert delivery is not None
                tries += 1
                if not self.consumer.retries_instantly(handling.definition, delivery, error, tries):
                    raise
                handling.delivery = isolated(delivery)


class Decoding(Chained):
    """The message decoded from the delivery, for the handler's type."""

    async def ainvoke(self, handling: Handling) -> Any:
        delivery, headers = handling.delivery, handling.headers
        assert delivery is not None and headers is not None
        handling.message = self.consumer.message_for(
            handling.definition, delivery, headers, handling.payload_class
        )
        return await self.inner.ainvoke(handling)


class TimeLimit(Chained):
    """The rest runs within the handler's time limit, if it has one: its own, its bus's,
    or the worker's."""

    async def ainvoke(self, handling: Handling) -> Any:
        definition, delivery = handling.definition, handling.delivery
        assert delivery is not None and handling.message is not None
        limit = self.consumer.timeout_for(definition, delivery, handling.default_timeout)
        if limit is None:
            return await self.inner.ainvoke(handling)
        call = Call(definition, handling.message, delivery)
        return await time_limits.ainvoke(self.consumer.runtime, call, limit)


class Calling:
    """The innermost link: the handler's interceptors, sorted by their ``order`` (the
    application's, 500 by default; ``TransactionInterceptor``, 800; ``DeduplicationInterceptor``,
    900), then the handler."""

    def __init__(self, consumer: Consumer) -> None:
        self.runtime = consumer.runtime

    async def ainvoke(self, handling: Handling) -> Any:
        assert handling.message is not None
        return await self.runtime.ainvoke(handling.definition, handling.message, handling.delivery)


LINKS: tuple[type, ...] = (
    TimeToLive,
    Routing,
    DeadLettering,
    DelayedRetries,
    FailedCommands,
    InstantRetries,
    Decoding,
    TimeLimit,
    Calling,
)
"""The chain, outermost first: what a delivery meets before its handlers are found
(``TimeToLive``), where they are (``Routing``), then each handler's own links, those that
apply to it on its path, down to ``Calling``. Inside the worker's call, a ``SqlChannel``'s
batch transaction may be open around all of it."""


def receiving(consumer: Consumer) -> AsyncReceive:
    """The chain a worker's delivery goes through, down to its handlers' chains."""
    return TimeToLive(consumer, Routing(consumer))


def compose(consumer: Consumer, definition: HandlerDefinition, path: str) -> AsyncLink:
    """The chain of ``definition`` on ``path``: its links in the order of ``LINKS``."""
    link: AsyncLink = Calling(consumer)
    for cls in reversed(_CHAINED):
        if cls.applies_to(consumer, definition, path):
            link = cls(consumer, link)
    return link


_CHAINED = [cls for cls in LINKS if issubclass(cls, Chained)]
"""The links of a handler's own chain, in their order."""


async def _adead_letter(runtime: Runtime, letter: DeadLetter, repeated: bool = False) -> None:
    """Keep ``letter``; instruments hear of it unless a redone batch told them before."""
    await runtime.dead_letters.aadd(letter)
    if runtime.instruments and not repeated:
        runtime.instruments.dead_lettered(letter)
