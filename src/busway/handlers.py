"""The markers that declare handlers, and ``@asynchronous``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar, overload

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C")


class Kind(StrEnum):
    COMMAND = "command"
    EVENT = "event"
    QUERY = "query"


@dataclass(frozen=True, slots=True)
class HandlerMark:
    """What ``@command_handler`` and friends record on a function."""

    kind: Kind
    key: str | None
    transactional: bool | None = None


HANDLER_MARKS = "__busway_handler__"
ASYNC_MARK = "__busway_async__"


class HandlerMarker:
    """``@command_handler``, ``@event_handler`` and ``@query_handler``.

    Bare, the handler is routed by its first parameter's type hint; with a string, by that
    routing key: ``@command_handler("order.place")``. ``transactional=`` opts the handler out
    of (``False``) or into (``True``) a database transaction of its own.
    """

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self.__name__ = f"{kind.value}_handler"

    def __repr__(self) -> str:
        return f"@{self.__name__}"

    @overload
    def __call__(self, target: F, /) -> F: ...

    @overload
    def __call__(
        self, key: str | None = None, /, *, transactional: bool | None = None
    ) -> Callable[[F], F]: ...

    def __call__(self, target: Any = None, /, *, transactional: bool | None = None) -> Any:
        key = target if isinstance(target, str) else None
        kind = self.kind

        def mark(function: F) -> F:
            marks = list(getattr(function, HANDLER_MARKS, ()))
            marks.append(HandlerMark(kind, key, transactional))
            setattr(function, HANDLER_MARKS, tuple(marks))
            return function

        if callable(target):
            return mark(target)
        return mark


command_handler = HandlerMarker(Kind.COMMAND)
event_handler = HandlerMarker(Kind.EVENT)
query_handler = HandlerMarker(Kind.QUERY)


def asynchronous(*channels: str) -> Callable[[C], C]:
    """Send through channels instead of handling now.

    On a handler: the handler runs when a worker consumes the channel. On a gateway class or
    one gateway method: every message sent through it goes to the channel, and the worker
    dispatches it as the plain bus would. Several channels form a pipeline: each hop's worker
    forwards to the next channel, the last one dispatches.
    """
    if not channels or not all(isinstance(name, str) and name for name in channels):
        raise TypeError(
            '@asynchronous needs at least one channel name, e.g. @asynchronous("async")'
        )

    def mark(target: C) -> C:
        setattr(target, ASYNC_MARK, tuple(channels))
        return target

    return mark


def handler_marks(function: object) -> tuple[HandlerMark, ...]:
    marks = getattr(function, HANDLER_MARKS, ())
    return marks if isinstance(marks, tuple) else ()


def async_channels(target: object) -> tuple[str, ...]:
    channels = getattr(target, ASYNC_MARK, ())
    return channels if isinstance(channels, tuple) else ()
