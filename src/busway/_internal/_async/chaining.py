"""A call through one handler's ``Chain`` of interceptors: every ``before`` hook, the
``around`` hooks nested with the handler innermost, then every ``after`` hook, or every
``failed`` hook if anything raised. ``Chain.acall`` is this; ``Chain.call`` is its sync
twin, generated from it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from busway.interceptors import Invocation

if TYPE_CHECKING:
    from busway._internal.chain import AAround, Chain


async def acall(chain: Chain, invocation: Invocation, handler: Callable[[], Awaitable[Any]]) -> Any:
    try:
        for before in chain.befores:
            before(invocation)
        proceed = handler
        for aaround in reversed(chain.aarounds):
            proceed = _abind(aaround, invocation, proceed)
        result = await proceed()
    except BaseException as error:
        for failed in chain.faileds:
            failed(invocation, error)
        raise
    for after in chain.afters:
        after(invocation, result)
    return result


def _abind(
    aaround: AAround, invocation: Invocation, proceed: Callable[[], Awaitable[Any]]
) -> Callable[[], Awaitable[Any]]:
    return lambda: aaround(invocation, proceed)
