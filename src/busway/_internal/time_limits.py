"""Handler time limits as a worker's two edges enforce them.

- An ``async def`` handler is cancelled at its limit (``asyncio.timeout``): its interceptors
  unwind as for any error, its savepoint rolls back.
- A ``def`` handler run by a sync worker runs in a thread of its own while the worker waits.
  At the limit the worker abandons that thread: Python cannot stop it. The connections the
  handler holds a transaction on (the batch's, in a ``SqlChannel``'s ``transaction`` mode, or
  one its ``TransactionInterceptor`` opened) are freed: their statements interrupted and
  server sessions ended, then, once the thread had a moment to unwind, invalidated. Their
  transactions roll back and release their locks; the thread, if it goes on, can commit
  nothing. The channel then redoes the batch without the timed-out handler.
- A ``def`` handler under ``arun`` runs on the event loop. Where that loop runs in the main
  thread, a ``SIGALRM`` at the limit raises ``HandlerTimeout`` inside the handler.

Either way the handling fails with ``HandlerTimeout``: retried, then dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from busway._internal.bridge import run_coroutine
from busway._internal.fields import attempt_in, failure_fields, message_id_in
from busway.channels.base import BatchRollback, Delivery
from busway.errors import HandlerTimeout

if TYPE_CHECKING:
    from busway._internal.runtime import Call, Runtime

log = logging.getLogger("busway")
T = TypeVar("T")


UNWIND_GRACE = 1.0
"""How long an abandoned handler's thread gets to unwind once its statements are
interrupted, before its connections are cut under it."""


@dataclass(frozen=True, slots=True)
class Release:
    """How to free a connection an abandoned handler holds a transaction on."""

    interrupt: Callable[[], object]
    """Stop what runs on it now (end the server session, interrupt SQLite), from any thread."""
    cut: Callable[[], object]
    """Make it unusable, so that nothing of its transaction can commit (``invalidate``)."""


@dataclass(eq=False)
class Abandonment:
    """Filled in, for the thread of a ``def`` handler, once the worker gave up waiting."""

    error: HandlerTimeout | None = None
    releases: list[Release] = field(default_factory=list)
    """The connections the handler holds a transaction on, for now."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def abandon(self, error: HandlerTimeout, finished: threading.Event) -> None:
        """Interrupt the handler's statements, give its thread a moment to unwind on its
        own (cutting a connection in the middle of a call is unsafe with some drivers),
        then cut the connections it still holds."""
        with self.lock:
            self.error = error
            releases = list(self.releases)
        for release in releases:
            _quietly(release.interrupt)
        if releases and finished.wait(UNWIND_GRACE):
            return  # the thread unwound: it cut them itself
        with self.lock:
            for release in self.releases:
                _quietly(release.cut)
            self.releases.clear()


def _quietly(action: Callable[[], object]) -> None:
    try:
        action()
    except Exception as error:  # the next step still frees the connection, only later
        log.warning("freeing an abandoned handler's connection: %s", error)


_abandonment: contextvars.ContextVar[Abandonment | None] = contextvars.ContextVar(
    "busway_abandonment", default=None
)


def raise_if_abandoned() -> None:
    """Raise ``HandlerTimeout`` if the handler running here is past its time limit and no
    longer waited for: whatever it would commit now must roll back instead."""
    abandonment = _abandonment.get()
    if abandonment is not None and abandonment.error is not None:
        raise abandonment.error


@contextmanager
def released_if_abandoned(
    interrupt: Callable[[], object], cut: Callable[[], object]
) -> Iterator[None]:
    """While the block runs on a connection, free that connection if the worker abandons
    the handler running here: its transaction's locks must not outlive the time limit."""
    abandonment = _abandonment.get()
    if abandonment is None:
        yield
        return
    release = Release(interrupt, cut)
    with abandonment.lock:
        if abandonment.error is not None:
            raise abandonment.error
        abandonment.releases.append(release)
    try:
        yield
    finally:
        with abandonment.lock:
            held = release in abandonment.releases
            if held:
                abandonment.releases.remove(release)
            if held and abandonment.error is not None:
                _quietly(cut)


@dataclass(frozen=True, slots=True)
class Alarm:
    handler: str
    limit: float
    deadline: float


_alarm: contextvars.ContextVar[Alarm | None] = contextvars.ContextVar("busway_alarm", default=None)
_ringing: list[Alarm] = []
"""The alarm armed in the main thread, if any (one at a time: a nested handler shares it)."""


# -- the sync edge ----------------------------------------------------------------------------


def invoke(runtime: Runtime, call: Call, limit: float) -> Any:
    """Run a worker's handler call within ``limit`` seconds, blocking."""
    definition, delivery = call.definition, call.delivery
    assert delivery is not None
    if definition.info.is_coroutine:
        handling = runtime.ainvoke(definition, call.message, delivery)
        return run_coroutine(_within(handling, definition.name, limit, delivery))
    try:
        headers = delivery.envelope.headers
        fields = failure_fields(
            delivery.channel,
            definition.name,
            message_id_in(headers),
            attempt_in(headers),
            HandlerTimeout(definition.name, limit),
        )
        return _in_thread(
            lambda: runtime.invoke(definition, call.message, delivery),
            definition.name,
            limit,
            fields,
        )
    except _GaveUp:
        invalidate = getattr(delivery.transaction, "invalidate", None)
        if callable(invalidate):
            invalidate()  # rolls the batch back, and the abandoned thread can commit nothing
        _fail(HandlerTimeout(definition.name, limit), delivery, batch_lost=callable(invalidate))


class _GaveUp(Exception):
    pass


def _in_thread(
    function: Callable[[], T], name: str, limit: float, fields: dict[str, Any] | None = None
) -> T:
    context = contextvars.copy_context()
    abandonment = Abandonment()
    context.run(_abandonment.set, abandonment)
    done = threading.Event()
    outcome: list[tuple[bool, Any]] = []

    def target() -> None:
        try:
            outcome.append((True, context.run(function)))
        except BaseException as error:
            outcome.append((False, error))
        finally:
            done.set()

    threading.Thread(target=target, name=f"busway-handler {name}", daemon=True).start()
    if not done.wait(limit):
        abandonment.abandon(HandlerTimeout(name, limit), done)
        log.error("handler %s is still running after %gs: abandoned", name, limit, extra=fields)
        raise _GaveUp
    succeeded, value = outcome[0]
    if succeeded:
        result: T = value
        return result
    raise value


# -- the asyncio edge -------------------------------------------------------------------------


async def ainvoke(runtime: Runtime, call: Call, limit: float) -> Any:
    """Run a worker's handler call within ``limit`` seconds, on the event loop."""
    definition, delivery = call.definition, call.delivery
    assert delivery is not None
    handling = runtime.ainvoke(definition, call.message, delivery)
    if definition.info.is_coroutine:
        return await _within(handling, definition.name, limit, delivery)
    token = _alarm.set(Alarm(definition.name, limit, time.monotonic() + limit))
    try:
        return await _within(handling, definition.name, limit, delivery)
    except HandlerTimeout as error:
        _fail(error, delivery)
    finally:
        _alarm.reset(token)


async def _within(handling: Awaitable[T], name: str, limit: float, delivery: Delivery) -> T:
    expired = False
    try:
        async with asyncio.timeout(limit) as scope:
            return await handling
    except TimeoutError:
        expired = scope.expired()
        if not expired:
            raise  # the handler's own TimeoutError
    assert expired
    # Cancelled inside a database call, the connection is invalidated: the batch is lost.
    lost = bool(getattr(delivery.transaction, "invalidated", False))
    _fail(HandlerTimeout(name, limit), delivery, batch_lost=lost)


RING_AGAIN = 0.05
"""When the alarm finds the event loop running, not the handler, it rings again this soon."""


def call_def_handler(call: Callable[..., T], *arguments: Any) -> T:
    """Call a ``def`` handler; under ``arun``, raise ``HandlerTimeout`` inside it at its time
    limit, where the event loop runs in the main thread and ``SIGALRM`` is free.

    The alarm raises only while the handler's own code runs (this call's frame is on the
    interrupted stack). A handler waiting on the event loop, for a database call through
    ``run_sync``, say, leaves the loop free: ``asyncio.timeout`` cancels it there instead.
    """
    alarm = _alarm.get()
    if alarm is None or _ringing or not _can_ring(alarm):
        return call(*arguments)
    remaining = alarm.deadline - time.monotonic()
    if remaining <= 0:
        raise HandlerTimeout(alarm.handler, alarm.limit)
    here = sys._getframe()

    def ring(_signum: int, frame: FrameType | None) -> None:
        while frame is not None and frame is not here:
            frame = frame.f_back
        if frame is None:
            signal.setitimer(signal.ITIMER_REAL, RING_AGAIN)
        elif _ringing:
            _ringing.clear()
            raise HandlerTimeout(alarm.handler, alarm.limit)

    previous = signal.signal(signal.SIGALRM, ring)
    _ringing.append(alarm)
    signal.setitimer(signal.ITIMER_REAL, remaining)
    try:
        return call(*arguments)
    finally:
        _ringing.clear()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


_warned: set[str] = set()


def _can_ring(alarm: Alarm) -> bool:
    if threading.current_thread() is threading.main_thread() and signal.getsignal(
        signal.SIGALRM
    ) in (signal.SIG_DFL, signal.SIG_IGN):
        return True
    if alarm.handler not in _warned:
        _warned.add(alarm.handler)
        log.warning(
            "the time limit of def handler %s is not enforced under arun: its event loop "
            "runs outside the main thread, or the application handles SIGALRM; make it an "
            "async def handler, or consume its channel with messaging.run()",
            alarm.handler,
        )
    return False


# -- both edges -------------------------------------------------------------------------------


def _fail(error: HandlerTimeout, delivery: Delivery, batch_lost: bool = False) -> NoReturn:
    """Raise the timeout as the handling's failure. When the batch transaction is gone, or
    was run without savepoints (the handler's writes are mixed with its neighbours'), the
    channel redoes the batch and deals with this message at once."""
    if delivery.transaction is not None and (batch_lost or not delivery.isolated):
        raise BatchRollback(str(error)) from error
    raise error
