"""Instruments: what sees every message go out and come in, for traces and metrics.

An instrument wraps the three moments of a message's life that a trace or a metric is made
of: a send to a channel, a worker's handling of one delivery, and one call of one handler
(each try of it). Each moment is a context manager, so an instrument sees how long it took
and whether it raised; a send's may also change the envelope's headers (a trace context).

With no instrument, the runtime skips them all: tracing and metrics cost nothing unless
``Messaging(instruments=[...])`` names them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import Any

from busway.channels.base import BatchRollback, Channel, Delivery, Envelope
from busway.interceptors import Invocation
from busway.recovery import DeadLetter


class Instrument:
    """Override any hook; the defaults do nothing."""

    def attach(self, channels: Mapping[str, Channel]) -> None:
        """Called once by ``Messaging(...)`` with its channels, by name."""

    def sending(self, channel: str, envelope: Envelope) -> AbstractContextManager[Envelope]:
        """Around one send of ``envelope`` to ``channel``; yields the envelope to send."""
        return nullcontext(envelope)

    def receiving(self, delivery: Delivery) -> AbstractContextManager[Any]:
        """Around a worker's handling of one delivery: its forwarding, or all its handlers."""
        return nullcontext()

    def handling(self, invocation: Invocation) -> AbstractContextManager[Any]:
        """Around one call of one handler with a delivery a worker took from a channel; an
        instant retry is a call of its own. (A handler a gateway calls at once, through no
        channel, is a function call of its caller's: no instrument sees it.)"""
        return nullcontext()

    def retried(self, delivery: Delivery, handler: str, error: BaseException) -> None:
        """A handler failed on ``delivery`` and its message was sent back for a later try."""

    def dead_lettered(self, letter: DeadLetter) -> None:
        """A message went to the dead letter store."""


def failure_of(error: BaseException) -> BaseException | None:
    """The handler's own failure in what came out of its call, if it failed.

    A handler's error in a batch run without savepoints comes out as the cause of the
    batch's rollback; a rollback with no such cause (a duplicate met, a transaction lost) is
    nobody's failure."""
    failure = error.__cause__ if isinstance(error, BatchRollback) else error
    return None if failure is None or isinstance(failure, BatchRollback) else failure


class Instruments:
    """The instruments of one ``Messaging``, called in the order they were given."""

    __slots__ = ("all",)

    def __init__(self, instruments: Iterable[Instrument] = ()) -> None:
        self.all = tuple(instruments)

    def __bool__(self) -> bool:
        return bool(self.all)

    def attach(self, channels: Mapping[str, Channel]) -> None:
        for instrument in self.all:
            instrument.attach(channels)

    def sending(self, channel: str, envelope: Envelope) -> AbstractContextManager[Envelope]:
        if len(self.all) == 1:
            return self.all[0].sending(channel, envelope)
        return self._sending(channel, envelope)

    def receiving(self, delivery: Delivery) -> AbstractContextManager[Any]:
        if len(self.all) == 1:
            return self.all[0].receiving(delivery)
        return self._receiving(delivery)

    def handling(self, invocation: Invocation) -> AbstractContextManager[Any]:
        if len(self.all) == 1:
            return self.all[0].handling(invocation)
        return self._handling(invocation)

    @contextmanager
    def _sending(self, channel: str, envelope: Envelope) -> Iterator[Envelope]:
        with ExitStack() as stack:
            for instrument in self.all:
                envelope = stack.enter_context(instrument.sending(channel, envelope))
            yield envelope

    @contextmanager
    def _receiving(self, delivery: Delivery) -> Iterator[None]:
        with ExitStack() as stack:
            for instrument in self.all:
                stack.enter_context(instrument.receiving(delivery))
            yield

    @contextmanager
    def _handling(self, invocation: Invocation) -> Iterator[None]:
        with ExitStack() as stack:
            for instrument in self.all:
                stack.enter_context(instrument.handling(invocation))
            yield

    def retried(self, delivery: Delivery, handler: str, error: BaseException) -> None:
        for instrument in self.all:
            instrument.retried(delivery, handler, error)

    def dead_lettered(self, letter: DeadLetter) -> None:
        for instrument in self.all:
            instrument.dead_lettered(letter)
