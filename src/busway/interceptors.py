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

Interceptors are the innermost links of the one chain every message goes through. Its order
is written down once, in ``busway._internal._async.links.LINKS``, outermost first:

    TimeToLive      a delivery past its time to live is dropped
    Routing         the delivery's handlers are found; each has its own chain below
    DeadLettering   a failure for good goes to the dead letter store
    DelayedRetries  a failure retried later goes back to its channel, due after a delay
    FailedCommands  a command failed where it was sent goes to Messaging(command_failures=...)
    InstantRetries  a failure retried at once runs the rest again, in a new savepoint
    Decoding        the message is decoded for the handler
    TimeLimit       the rest runs within the handler's time limit
    Calling         this chain of interceptors, by order: the application's (500 by
                    default), TransactionInterceptor (800: opens the transaction, or joins
                    the open one under a savepoint), DeduplicationInterceptor (900: the
                    inbox, inside that transaction); then the handler

A worker's delivery meets every link that applies to its handler (all but
``FailedCommands``); a send through a gateway meets ``FailedCommands`` (a command, when
``Messaging(command_failures=...)`` is set) and ``Calling``. Around all of it, a ``SqlChannel``
in its default ``transaction`` mode claims a batch, hands it out and acknowledges it in one
transaction.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

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
