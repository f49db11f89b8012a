"""Logic written once, as a generator of the I/O it needs, carried out by a sync or an
asyncio edge.

The generator yields a description of each piece of I/O; the edge carries it out and sends
the result back in, or throws the error in, at the ``yield``. The generator's return value is
the edge's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

Io = TypeVar("Io")
Result = TypeVar("Result")


def drive(steps: Generator[Io, Any, Result], carry_out: Callable[[Io], Any]) -> Result:
    """Run ``steps`` to the end, carrying out each piece of I/O as it comes, blocking."""
    outcome: Any = None
    failure: BaseException | None = None
    while True:
        try:
            io = steps.send(outcome) if failure is None else steps.throw(failure)
        except StopIteration as done:
            result: Result = done.value
            return result
        outcome = failure = None
        try:
            outcome = carry_out(io)
        except BaseException as error:
            failure = error


async def adrive(
    steps: Generator[Io, Any, Result], carry_out: Callable[[Io], Awaitable[Any]]
) -> Result:
    """``drive`` on an event loop: each piece of I/O is awaited."""
    outcome: Any = None
    failure: BaseException | None = None
    while True:
        try:
            io = steps.send(outcome) if failure is None else steps.throw(failure)
        except StopIteration as done:
            result: Result = done.value
            return result
        outcome = failure = None
        try:
            outcome = await carry_out(io)
        except BaseException as error:
            failure = error
