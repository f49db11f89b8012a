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


def _marker(kind: Kind) -> Any:
    @overload
    def decorate(target: F, /) -> F: ...

    @overload
    def decorate(
        key: str | None = None, /, *, transactional: bool | None = None
    ) -> Callable[[F], F]: ...

    def decorate(target: Any = None, /, *, transactional: bool | None = None) -> Any:
        key = target if isinstance(target, str) else None

        def mark(function: F) -> F:
            marks = list(getattr(function, HANDLER_MARKS, ()))
            marks.append(HandlerMark(kind, key, transactional))
            setattr(function, HANDLER_MARKS, tuple(marks))
            return function

        if callable(target):
            return mark(target)
        return mark

    decorate.__name__ = f"{kind.value}_handler"
    decorate.__doc__ = (
        f"Mark a function or method as a {kind.value} handler, routed by its first parameter's "
        f'type hint, or by a routing key: ``@{kind.value}_handler("key")``. '
        "``transactional=False`` opts the handler out of the database transaction."
    )
    return decorate


command_handler = _marker(Kind.COMMAND)
event_handler = _marker(Kind.EVENT)
query_handler = _marker(Kind.QUERY)


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
