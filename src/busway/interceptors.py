"""Interceptors: the one chain through which cross-cutting behaviour wraps every handler.

For each handler busway builds, at start-up, the chain of interceptors that apply to it
(``applies_to``), sorted by ``order`` (lower is further out; equal orders keep the order they
were given in). A call then runs:

1. every ``before`` hook, outermost first;
2. the ``around`` hooks nested, outermost first (``aaround`` on the asyncio path), with the
   handler innermost;
3. every ``after`` hook with the result, outermost first; or, if anything raised, every
   ``failed`` hook, and the error goes on.

busway's own layers take these places: retries 100, tracing 200, user interceptors 500 (the
default), transactions 800, deduplication 900 (inside the transaction it records into).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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


def _overrides(interceptor: Interceptor, hook: str) -> bool:
    return getattr(type(interceptor), hook) is not getattr(Interceptor, hook)


class Chain:
    """The interceptors of one handler, with only the hooks they override."""

    __slots__ = ("aarounds", "afters", "arounds", "befores", "faileds")

    def __init__(self, interceptors: list[Interceptor]) -> None:
        ordered = sorted(interceptors, key=lambda interceptor: interceptor.order)
        self.befores = [i.before for i in ordered if _overrides(i, "before")]
        self.arounds = [i.around for i in ordered if _overrides(i, "around")]
        self.aarounds = [i.aaround for i in ordered if _overrides(i, "aaround")]
        self.afters = [i.after for i in ordered if _overrides(i, "after")]
        self.faileds = [i.failed for i in ordered if _overrides(i, "failed")]

    def __bool__(self) -> bool:
        return bool(self.befores or self.arounds or self.aarounds or self.afters or self.faileds)

    def call(self, invocation: Invocation, handler: Callable[[], Any]) -> Any:
        try:
            for before in self.befores:
                before(invocation)
            proceed = handler
            for around in reversed(self.arounds):
                proceed = _bind(around, invocation, proceed)
            result = proceed()
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


def _bind(
    around: Callable[[Invocation, Callable[[], Any]], Any],
    invocation: Invocation,
    proceed: Callable[[], Any],
) -> Callable[[], Any]:
    return lambda: around(invocation, proceed)


def _abind(
    aaround: Callable[[Invocation, Callable[[], Awaitable[Any]]], Awaitable[Any]],
    invocation: Invocation,
    proceed: Callable[[], Awaitable[Any]],
) -> Callable[[], Awaitable[Any]]:
    return lambda: aaround(invocation, proceed)
