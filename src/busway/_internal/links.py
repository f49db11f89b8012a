"""What the links of the chain share, on both paths: the handling they pass inward, and the
chains each handler has, composed once at start-up.

The links themselves do I/O (a retry is sent, a letter stored): they are written for asyncio
in ``busway._internal._async.links``, and the sync ones generated from it. Their order is
written down once, there, in ``LINKS``.
"""

from __future__ import annotations

from collections.abc import Awaitable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from busway.channels.base import Delivery
from busway.message import Headers, Message

if TYPE_CHECKING:
    from busway._internal.consuming import Outcome
    from busway._internal.registry import HandlerDefinition


class Stopping(Protocol):
    """The worker running the chain, as a link that waits sees it."""

    def pause(self, seconds: float) -> bool:
        """Wait ``seconds``, or until the worker is told to stop; whether it was."""

    async def apause(self, seconds: float) -> bool: ...


worker_stopping: ContextVar[Stopping | None] = ContextVar("busway_worker_stopping", default=None)
"""The worker whose loop runs in this thread or task, if any."""


@dataclass(slots=True, eq=False)
class Handling:
    """One handler's handling of one message, as the links of its chain see it."""

    definition: HandlerDefinition
    message: Message[Any] | None = None
    """The message: given on a send; decoded from ``delivery`` when a worker handles it."""
    delivery: Delivery | None = None
    """What a channel handed a worker, if that is where the message comes from."""
    headers: Headers | None = None
    payload_class: type[Any] | None = None
    """The class the message's type header names here, when its handlers were found by it."""
    default_timeout: float | None = None
    """The worker's time limit for handlers without one of their own or their bus's."""
    known_failure: BaseException | None = None
    """The handler's failure met before, when the channel redoes a batch: not run again."""
    failure: BaseException | None = None
    """The failure a link dealt with for good (retry sent, letter stored), if any."""
    retried: int = 0
    """How many delayed retries its failures made: sent back to the channel, or waited for in
    the worker (``DelayedRetries``)."""
    dead_lettered: bool = False
    """Whether that failure went to the dead letter store."""


class Link(Protocol):
    """A link of a sync chain: does its part, and calls the next link, or not."""

    def invoke(self, handling: Handling) -> Any: ...


class AsyncLink(Protocol):
    """A link of an asyncio chain."""

    def ainvoke(self, handling: Handling) -> Awaitable[Any]: ...


class Receive(Protocol):
    """A link before a delivery's handlers are found, on the sync path."""

    def receive(self, delivery: Delivery, default_timeout: float | None) -> Outcome: ...


class AsyncReceive(Protocol):
    def areceive(self, delivery: Delivery, default_timeout: float | None) -> Awaitable[Outcome]: ...


@dataclass(frozen=True, slots=True)
class Chains:
    """One handler's chains, composed once at start-up: for a worker that consumes its
    message (``consume``, ``aconsume``) and for a gateway that sends it (``send``,
    ``asend``)."""

    consume: Link
    aconsume: AsyncLink
    send: Link
    asend: AsyncLink
    direct: bool
    """Whether sending runs the handler's interceptors and the handler, and no other link:
    a gateway may then call it at once."""
