"""Instruments: what sees every message go out and come in, for traces and metrics.

An instrument wraps the three moments of a message's life that a trace or a metric is made
of: a send to a channel, a worker's handling of one delivery, and one call of one handler
(each try of it). Each moment is a context manager, so an instrument sees how long it took
and whether it raised; a send's may also change the envelope's headers (a trace context).

With no instrument, the runtime skips them all: tracing and metrics cost nothing unless
``Messaging(instruments=[...])`` names them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from types import TracebackType
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
    """The instruments of one ``Messaging``, called in the order they were given.

    Each hook calls only the instruments that override it (the defaults do nothing); those
    of several are entered in order and exited in reverse, as nested ``with`` statements."""

    __slots__ = ("_dead_letterers", "_handlers", "_receivers", "_retriers", "_senders", "all")

    def __init__(self, instruments: Iterable[Instrument] = ()) -> None:
        self.all = tuple(instruments)
        self._senders = tuple(i.sending for i in _overriding(self.all, "sending"))
        self._receivers = tuple(i.receiving for i in _overriding(self.all, "receiving"))
        self._handlers = tuple(i.handling for i in _overriding(self.all, "handling"))
        self._retriers = tuple(i.retried for i in _overriding(self.all, "retried"))
        self._dead_letterers = tuple(
            i.dead_lettered for i in _overriding(self.all, "dead_lettered")
        )

    def __bool__(self) -> bool:
        return bool(self.all)

    def attach(self, channels: Mapping[str, Channel]) -> None:
        for instrument in self.all:
            instrument.attach(channels)

    def sending(self, channel: str, envelope: Envelope) -> AbstractContextManager[Envelope]:
        senders = self._senders
        if len(senders) == 1:
            return senders[0](channel, envelope)
        if not senders:
            return nullcontext(envelope)
        return _Sending(senders, channel, envelope)

    def receiving(self, delivery: Delivery) -> AbstractContextManager[Any]:
        receivers = self._receivers
        if len(receivers) == 1:
            return receivers[0](delivery)
        if not receivers:
            return _NOTHING
        return _Nested(receivers, delivery)

    def handling(self, invocation: Invocation) -> AbstractContextManager[Any]:
        handlers = self._handlers
        if len(handlers) == 1:
            return handlers[0](invocation)
        if not handlers:
            return _NOTHING
        return _Nested(handlers, invocation)

    def retried(self, delivery: Delivery, handler: str, error: BaseException) -> None:
        for retried in self._retriers:
            retried(delivery, handler, error)

    def dead_lettered(self, letter: DeadLetter) -> None:
        for dead_lettered in self._dead_letterers:
            dead_lettered(letter)


_NOTHING: AbstractContextManager[None] = nullcontext()


def _overriding(instruments: tuple[Instrument, ...], hook: str) -> tuple[Instrument, ...]:
    """Those of ``instruments`` whose ``hook`` is not the default, which does nothing."""
    default = getattr(Instrument, hook)
    return tuple(
        instrument
        for instrument in instruments
        if getattr(getattr(instrument, hook), "__func__", None) is not default
    )


class _Nesting:
    """The hooks of several instruments around one moment: entered in order, exited in
    reverse, each exit seeing what the one inside it raised or suppressed, as in nested
    ``with`` statements (or an ``ExitStack``, at a fraction of its cost)."""

    __slots__ = ("_entered",)

    _entered: list[AbstractContextManager[Any]]

    def _enter(self, manager: AbstractContextManager[Any]) -> Any:
        try:
            value = manager.__enter__()
        except BaseException as error:
            self.__exit__(type(error), error, error.__traceback__)
            raise
        self._entered.append(manager)
        return value

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        """Exit what was entered, innermost first; whether ``error`` was suppressed."""
        pending = error
        entered = self._entered
        while entered:
            manager = entered.pop()
            try:
                if pending is None:
                    manager.__exit__(None, None, None)
                elif manager.__exit__(type(pending), pending, pending.__traceback__):
                    pending = None
            except BaseException as raised:
                pending = raised
        if pending is error:
            return False
        if pending is None:
            return True
        raise pending


class _Nested(_Nesting):
    """Several instruments' ``receiving`` or ``handling``, called with one argument."""

    __slots__ = ("_argument", "_hooks")

    def __init__(
        self, hooks: tuple[Callable[[Any], AbstractContextManager[Any]], ...], argument: Any
    ) -> None:
        self._entered = []
        self._hooks = hooks
        self._argument = argument

    def __enter__(self) -> None:
        argument = self._argument
        for hook in self._hooks:
            self._enter(hook(argument))


class _Sending(_Nesting):
    """Several instruments' ``sending``: each sends the envelope the one before it made."""

    __slots__ = ("_channel", "_envelope", "_hooks")

    def __init__(
        self,
        hooks: tuple[Callable[[str, Envelope], AbstractContextManager[Envelope]], ...],
        channel: str,
        envelope: Envelope,
    ) -> None:
        self._entered = []
        self._hooks = hooks
        self._channel = channel
        self._envelope = envelope

    def __enter__(self) -> Envelope:
        envelope = self._envelope
        for hook in self._hooks:
            envelope = self._enter(hook(self._channel, envelope))
        return envelope
