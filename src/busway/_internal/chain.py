"""The chain of one handler's interceptors, composed once at start-up: which hooks run on
the sync path and which on the asyncio path, how an interceptor that overrides only one of
``around`` and ``aaround`` runs on the other, and why a chain that cannot run soundly is
refused (see ``busway.interceptors`` for the rules)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from busway._internal._async.chaining import acall as _acall
from busway._internal._sync.chaining import _bind
from busway._internal._sync.chaining import call as _call
from busway._internal.bridge import run_around
from busway.interceptors import HandlerInfo, Interceptor, Invocation

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

    call = _call
    acall = _acall

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
