"""Interceptors: the one chain through which cross-cutting behaviour wraps every handler.

For each handler busway builds, at start-up, the chain of interceptors that apply to it
(``applies_to``), sorted by ``order`` (lower is further out; equal orders keep the order they
were given in). A call then runs:

1. every ``before`` hook, outermost first;
2. the ``around`` and ``aaround`` hooks nested, outermost first, with the handler innermost;
3. every ``after`` hook with the result, outermost first; or, if anything raised, every
   ``failed`` hook, and the error goes on.

Which of ``around`` and ``aaround`` runs, so that every interceptor runs on every path:

- the sync path, a ``def`` handler: ``around``; an interceptor with only ``aaround`` has it
  run on busway's helper event loop, and what it wraps goes on in the calling thread;
- the asyncio path, a ``def`` handler: ``aaround``, down to the outermost interceptor with
  only ``around``; from there inward the rest of the chain and the handler run as one sync
  call (``around`` hooks), where ``def`` handlers run on the asyncio path;
- an ``async def`` handler, on either path: ``aaround`` (the sync path runs the handler and
  its chain on the helper loop).

``Messaging(...)`` refuses what cannot run soundly: an interceptor with only ``around`` that
applies to an ``async def`` handler (a sync hook cannot wrap a coroutine), and, inside the sync
call of a ``def`` handler on the asyncio path, an interceptor whose ``aaround`` must be awaited
(it has no ``around``, or sets ``requires_aaround``).

Where busway's own layers sit, outermost first, as a worker handles a delivery:

1. the channel's transaction, if it has one: a ``SqlChannel`` (in its default ``transaction``
   mode) claims a batch, runs its handlers and acknowledges it in one transaction;
2. the decision on a failure (``busway._internal.consuming.Consumer``, not interceptors):
   instant retries run everything below again; then a delayed retry sent back to the channel,
   or the dead letter store;
3. the handler's time limit (``busway._internal.time_limits``), around the whole chain;
4. this chain: user interceptors (``order`` 500 by default), then, with a database,
   ``TransactionInterceptor`` at 800 (opens the transaction, or joins the open one under a
   savepoint) and ``DeduplicationInterceptor`` at 900 (records the delivery in the inbox,
   inside that transaction);
5. the handler.

A send through a gateway runs only the chain and the handler; a command whose handling failed
there goes to ``Messaging(command_failures=...)``, if set.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from busway._internal.bridge import run_around
from busway.handlers import Kind
from busway.message import Message
from busway.recovery import RetryPolicy

if TYPE_CHECKING:
    from busway.channels.base import Delivery


@dataclass(frozen=True, slots=True)
class HandlerInfo:
    """What interceptors may know of a handler."""

    name: str
    kind: Kind
    key: str | None
    payload_type: type[Any] | None
    channels: tuple[str, ...]
    transactional: bool | None
    is_coroutine: bool
    retry: RetryPolicy | None = None
    """The handler's own retry policy, from ``@retry_policy``."""
    timeout: float | None = None
    """The handler's own time limit in seconds, from ``@handler_timeout``."""


@dataclass(slots=True)
class Invocation:
    """One call of one handler with one message."""

    message: Message[Any]
    handler: HandlerInfo
    delivery: Delivery | None = None
    resources: dict[type[Any], Any] = field(default_factory=dict)
    """Values handlers can ask for by type, put here by interceptors (a ``Session``, say)."""


class Interceptor:
    """Override any of the hooks; the defaults do nothing."""

    order: int = 500

    requires_aaround: ClassVar[bool] = False
    """On the asyncio path only ``aaround`` will do, ``around`` cannot stand in for it there
    (``TransactionInterceptor``: it joins the open asyncio transaction)."""

    def applies_to(self, handler: HandlerInfo) -> bool:
        return True

    def before(self, invocation: Invocation) -> None:
        pass

    def around(self, invocation: Invocation, proceed: Callable[[], Any]) -> Any:
        return proceed()

    async def aaround(self, invocation: Invocation, proceed: Callable[[], Awaitable[Any]]) -> Any:
        return await proceed()

    def after(self, invocation: Invocation, result: Any) -> None:
        pass

    def failed(self, invocation: Invocation, error: BaseException) -> None:
        pass


Around = Callable[[Invocation, Callable[[], Any]], Any]
AAround = Callable[[Invocation, Callable[[], Awaitable[Any]]], Coroutine[Any, Any, Any]]


class Chain:
    """The interceptors of one handler, with only the hooks they override, laid out for the
    sync path (``arounds``) and the asyncio path (``aarounds``, then the ``sync_unit``)."""

    __slots__ = ("aarounds", "afters", "arounds", "befores", "faileds", "sync_unit")

    def __init__(self, interceptors: Sequence[Interceptor] = (), coroutine: bool = False) -> None:
        ordered = _ordered(interceptors)
        awaited, sync_unit = _asyncio_layout(ordered, coroutine)
        self.befores = [i.before for i in ordered if _overrides(i, "before")]
        self.arounds = [_sync_around(i) for i in ordered if _wraps(i)]
        self.aarounds: list[AAround] = [i.aaround for i in awaited if _overrides(i, "aaround")]
        self.sync_unit: list[Around] = [i.around for i in sync_unit if _overrides(i, "around")]
        """What runs synchronously around a ``def`` handler on the asyncio path."""
        self.afters = [i.after for i in ordered if _overrides(i, "after")]
        self.faileds = [i.failed for i in ordered if _overrides(i, "failed")]

    def __bool__(self) -> bool:
        return bool(
            self.befores
            or self.arounds
            or self.aarounds
            or self.sync_unit
            or self.afters
            or self.faileds
        )

    def call(self, invocation: Invocation, handler: Callable[[], Any]) -> Any:
        try:
            for before in self.befores:
                before(invocation)
            result = _nest(self.arounds, invocation, handler)
        except BaseException as error:
            for failed in self.faileds:
                failed(invocation, error)
            raise
        for after in self.afters:
            after(invocation, result)
        return result

    async def acall(self, invocation: Invocation, handler: Callable[[], Awaitable[Any]]) -> Any:
        try:
            for before in self.befores:
                before(invocation)
            proceed = handler
            for aaround in reversed(self.aarounds):
                proceed = _abind(aaround, invocation, proceed)
            result = await proceed()
        except BaseException as error:
            for failed in self.faileds:
                failed(invocation, error)
            raise
        for after in self.afters:
            after(invocation, result)
        return result

    def call_sync_unit(self, invocation: Invocation, handler: Callable[[], Any]) -> Any:
        """Run a ``def`` handler on the asyncio path inside the chain's sync unit."""
        return _nest(self.sync_unit, invocation, handler)


def refusals(chains: Iterable[tuple[HandlerInfo, Sequence[Interceptor]]]) -> list[str]:
    """Why the chains of these handlers cannot run soundly, one sentence for each reason and
    the handlers it stops; empty if every chain can run."""
    stopped: dict[_Reason, list[str]] = {}
    for handler, interceptors in chains:
        for reason in _reasons(handler, _ordered(interceptors)):
            stopped.setdefault(reason, []).append(handler.name)
    return [reason.sentence(names) for reason, names in stopped.items()]


@dataclass(frozen=True, slots=True)
class _Reason:
    outer: str
    """The interceptor with only ``around``."""
    inner: str | None = None
    """The interceptor inside it that must be awaited, if that is the reason."""
    order: int = 0
    aaround_only: bool = False

    def sentence(self, handlers: list[str]) -> str:
        start = f"Interceptor {self.outer} overrides around but not aaround"
        if self.inner is None:
            return (
                f"{start}, and applies to the async def {_handlers(handlers)}: define aaround "
                "too, or exclude it in applies_to"
            )
        start = (
            f"{start}, so on the asyncio path it runs synchronously with the def "
            f"{_handlers(handlers)}, and {self.inner} inside it (order {self.order})"
        )
        if self.aaround_only:
            return (
                f"{start} overrides aaround but not around: define aaround on {self.outer} "
                f"too, or around on {self.inner}"
            )
        return (
            f"{start} runs only by its aaround there: define aaround on {self.outer} too, or "
            f"give it an order above {self.order}"
        )


def _reasons(handler: HandlerInfo, ordered: list[Interceptor]) -> list[_Reason]:
    if handler.is_coroutine:
        return [_Reason(_name(i)) for i in ordered if _around_only(i)]
    _, sync_unit = _asyncio_layout(ordered, coroutine=False)
    return [
        _Reason(_name(sync_unit[0]), _name(inner), inner.order, not _overrides(inner, "around"))
        for inner in sync_unit[1:]
        if _overrides(inner, "aaround")
        and (inner.requires_aaround or not _overrides(inner, "around"))
    ]


def _handlers(names: list[str]) -> str:
    if len(names) == 1:
        return f"handler {names[0]}"
    return f"handlers {', '.join(names[:-1])} and {names[-1]}"


def _ordered(interceptors: Sequence[Interceptor]) -> list[Interceptor]:
    return sorted(interceptors, key=lambda interceptor: interceptor.order)


def _asyncio_layout(
    ordered: list[Interceptor], coroutine: bool
) -> tuple[list[Interceptor], list[Interceptor]]:
    """The interceptors the asyncio path awaits, and those that run synchronously with a
    ``def`` handler: the outermost with only ``around``, and every one inside it."""
    if not coroutine:
        for index, interceptor in enumerate(ordered):
            if _around_only(interceptor):
                return ordered[:index], ordered[index:]
    return ordered, []


def _overrides(interceptor: Interceptor, hook: str) -> bool:
    return getattr(type(interceptor), hook) is not getattr(Interceptor, hook)


def _wraps(interceptor: Interceptor) -> bool:
    return _overrides(interceptor, "around") or _overrides(interceptor, "aaround")


def _around_only(interceptor: Interceptor) -> bool:
    return _overrides(interceptor, "around") and not _overrides(interceptor, "aaround")


def _name(interceptor: Interceptor) -> str:
    return type(interceptor).__name__


def _sync_around(interceptor: Interceptor) -> Around:
    if _overrides(interceptor, "around"):
        return interceptor.around
    aaround = interceptor.aaround

    def around(invocation: Invocation, proceed: Callable[[], Any]) -> Any:
        return run_around(lambda aproceed: aaround(invocation, aproceed), proceed)

    return around


def _nest(arounds: list[Around], invocation: Invocation, handler: Callable[[], Any]) -> Any:
    proceed = handler
    for around in reversed(arounds):
        proceed = _bind(around, invocation, proceed)
    return proceed()


def _bind(around: Around, invocation: Invocation, proceed: Callable[[], Any]) -> Callable[[], Any]:
    return lambda: around(invocation, proceed)


def _abind(
    aaround: AAround, invocation: Invocation, proceed: Callable[[], Awaitable[Any]]
) -> Callable[[], Awaitable[Any]]:
    return lambda: aaround(invocation, proceed)
