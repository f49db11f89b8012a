# Generated from src/busway/_internal/_async/chaining.py by tools/unasync.py: do not edit.
# Change the asyncio source, then run `make generate`.
"""A call through one handler's ``Chain`` of interceptors: every ``before`` hook, the
``around`` hooks nested with the handler innermost, then every ``after`` hook, or every
``failed`` hook if anything raised. ``Chain.acall`` is this; ``Chain.call`` is its sync
twin, generated from it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from busway.interceptors import Invocation

if TYPE_CHECKING:
    from busway._internal.chain import Around, Chain


def call(chain: Chain, invocation: Invocation, handler: Callable[[], Any]) -> Any:
    try:
        for before in chain.befores:
            before(invocation)
        proceed = handler
        for around in reversed(chain.arounds):
            proceed = _bind(around, invocation, proceed)
        result = proceed()
    except BaseException as error:
        for failed in chain.faileds:
            failed(invocation, error)
        raise
    for after in chain.afters:
        after(invocation, result)
    return result


def _bind(around: Around, invocation: Invocation, proceed: Callable[[], Any]) -> Callable[[], Any]:
    return lambda: around(invocation, proceed)
