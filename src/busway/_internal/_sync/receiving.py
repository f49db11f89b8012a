# Generated from src/busway/_internal/_async/receiving.py by tools/unasync.py: do not edit.
# Change the asyncio source, then run `make generate`.
"""What a worker does with one delivery: forward it, dead-letter it, drop it, or run its
handlers, each with its instant retries, then a delayed retry or a dead letter for each that
failed for good. The decisions are ``Consumer``'s; this is their I/O."""

from __future__ import annotations

import logging

from busway._internal import time_limits
from busway._internal.consuming import (
    DEAD_LETTERED,
    HANDLED,
    Consumer,
    Drop,
    Forward,
    Outcome,
    Reject,
    Run,
    isolate_siblings,
    isolated,
    note_forwarded,
    rehop,
)
from busway._internal.registry import HandlerDefinition
from busway._internal.runtime import Call, Enqueue, Runtime
from busway.channels.base import BatchRollback, Delivery
from busway.errors import ConversionError, SetupRequired
from busway.message import ID
from busway.recovery import DeadLetter

log = logging.getLogger("busway")


def receive(
    consumer: Consumer, delivery: Delivery, default_timeout: float | None = None
) -> Outcome:
    """Handle one delivery; what became of it. ``default_timeout`` is the time limit of
    handlers without one of their own or their bus's."""
    instruments = consumer.runtime.instruments
    if instruments:
        with instruments.receiving(delivery):
            return _areceive(consumer, delivery, default_timeout)
    return _areceive(consumer, delivery, default_timeout)


def _areceive(consumer: Consumer, delivery: Delivery, default_timeout: float | None) -> Outcome:
    runtime = consumer.runtime
    prepared = consumer.prepare(delivery)
    if isinstance(prepared, Forward):
        note_forwarded()
        try:
            runtime.send(prepared.channel, prepared.envelope)
        except ConversionError as unsendable:  # it can never travel there: poison
            _adead_letter(runtime, consumer.dead_letter(delivery, None, unsendable))
            return DEAD_LETTERED
        return HANDLED
    if isinstance(prepared, Reject):
        _adead_letter(runtime, prepared.letter)
        return DEAD_LETTERED
    if isinstance(prepared, Drop):
        log.warning("message %s dropped: %s", delivery.envelope.headers.get(ID), prepared.reason)
        return HANDLED
    delivery = isolate_siblings(delivery, prepared.steps)
    known = delivery.known_failure  # met the first time: the first handler is not run again
    ok, retried, dead_lettered = True, 0, 0
    for step in prepared.steps:
        if isinstance(step, Enqueue):
            runtime.send(step.channel, rehop(delivery.envelope, step.headers))
            continue
        definition = step.definition
        error = _running(consumer, definition, delivery, prepared, default_timeout, known)
        known = None
        if error is not None:
            ok = False
            outcome = consumer.decide_failure(delivery, definition, error)
            if isinstance(outcome, DeadLetter):
                _adead_letter(runtime, outcome, delivery.repeated)
                dead_lettered += 1
            else:
                runtime.send(*outcome)
                retried += 1
                if runtime.instruments and not delivery.repeated:  # told once, not per redo
                    runtime.instruments.retried(delivery, definition.name, error)
    return Outcome(ok, retried, dead_lettered)


def _adead_letter(runtime: Runtime, letter: DeadLetter, repeated: bool = False) -> None:
    """Keep ``letter``; instruments hear of it unless a redone batch told them before."""
    runtime.dead_letters.add(letter)
    if runtime.instruments and not repeated:
        runtime.instruments.dead_lettered(letter)


def _running(
    consumer: Consumer,
    definition: HandlerDefinition,
    delivery: Delivery,
    run: Run,
    default_timeout: float | None,
    known: BaseException | None,
) -> BaseException | None:
    """Run one handler, with its instant retries; the last error, or None. ``known``: its
    failure when the channel redoes the batch it failed in, met again without running it."""
    tries = 0
    while True:
        try:
            if known is not None:
                error, known = known, None
                raise error
            message = consumer.message_for(definition, delivery, run.headers, run.payload_class)
            limit = consumer.timeout_for(definition, delivery, default_timeout)
            if limit is None:
                consumer.runtime.invoke(definition, message, delivery)
            else:
                call = Call(definition, message, delivery)
                time_limits.invoke(consumer.runtime, call, limit)
            return None
        except (BatchRollback, SetupRequired):
            raise  # not the handler's failure: a missing table fails every message alike
        except Exception as error:
            tries += 1
            if not consumer.retries_instantly(definition, delivery, error, tries):
                return error
            delivery = isolated(delivery)  # each instant retry in a fresh savepoint
