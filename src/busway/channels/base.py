"""The interface every channel implements.

A channel is told its context once (``attach``), can create what it needs (``setup``), takes
envelopes (``send``) and hands them to a consumer (``consume``). The consumer's callback
returning means "acknowledge"; raising means "not handled": the channel keeps the message for
a later delivery and lets the error go on. Retries and dead letters are decided by the core,
which acknowledges what it has dealt with, so a channel needs no policy of its own.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Collection, Hashable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from busway.message import DELIVER_AT, HeaderValue

LATEST = 253_402_300_799.0
"""The last second of the year 9999: a ``busway.deliver_at`` beyond it is not a time."""


class MessageReturned(Exception):
    """Raised by a consumer callback before it touched the message in hand.

    The channel gives that message back for a later delivery, keeps the acknowledgements of
    the messages handled before it, and stops the current batch quietly.
    """


class BatchRollback(Exception):
    """A handler failed inside a batch transaction run without savepoints.

    The channel rolls the whole batch back and handles it again with ``isolated`` deliveries,
    where each handler's failure undoes only its own writes.
    """


class Unsent(Exception):
    """Raised by a batch's ``before_ack`` callback: the sends of some messages failed for good.

    Every one of those messages was only forwarded (``Batch.forwarded``): nothing else of
    theirs needs undoing. The consuming channel acknowledges the rest of the batch, keeps the
    messages of ``keys`` (the ``Batch.current`` keys they were handed out under) for a later
    delivery, then raises ``error``.
    """

    def __init__(self, keys: Collection[Hashable], error: BaseException) -> None:
        super().__init__(f"{len(keys)} message(s) not sent: {error}")
        self.keys = frozenset(keys)
        self.error = error

    def merge(self, other: Unsent) -> Unsent:
        """Both errors' messages, under the first error."""
        return Unsent(self.keys | other.keys, self.error)


@dataclass(frozen=True, slots=True)
class Envelope:
    """A message as it travels: encoded body and JSON-friendly headers."""

    body: bytes
    headers: Mapping[str, HeaderValue]

    @property
    def deliver_at(self) -> float | None:
        value = self.headers.get(DELIVER_AT)
        if not isinstance(value, int | float) or not 0 <= value <= LATEST:
            return None  # not a time any channel can keep: deliver now
        return float(value)


@dataclass(frozen=True, slots=True)
class Unreadable:
    """Why a channel could not read a message it holds; the core moves it to the dead letter
    store, its body and its headers as they came kept in the letter (see
    ``busway.channels.reading``)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Delivery:
    """An envelope handed to a consumer by a channel, as the channel made it."""

    envelope: Envelope
    channel: str
    transaction: Any = None
    """The open database connection the message was claimed in, when the channel has one."""
    redelivered: bool = False
    isolated: bool = True
    """Whether each handler's writes need a savepoint of their own in ``transaction``.

    A channel that can redo a whole batch clears it: handlers then run without savepoints,
    and a failing one raises ``BatchRollback`` so the channel rolls the batch back and
    redoes it with savepoints.
    """
    repeated: bool = False
    """Handed out before, in a batch the channel rolled back and now redoes: count it once."""
    known_failure: BaseException | None = None
    """Set when the channel redoes a batch: the error this message's handler raised the first
    time, so the handler is not run again and the failure is dealt with at once."""
    crashes: int = 0
    """How many times a worker died with this message in hand, as far as the channel can
    tell: the core dead-letters it once that reaches ``Messaging(max_crashes=...)``."""
    extra: dict[str, Any] = field(default_factory=dict)
    unreadable: Unreadable | None = None
    """Set when the channel could not read the message: ``envelope`` then holds its body and
    its raw headers, for the dead letter store."""


@dataclass(eq=False)
class Batch:
    """Work that must finish before a consuming channel acknowledges the messages in hand.

    A channel that consumes in batches sets ``current_batch`` while it hands them out, and runs
    ``before_ack`` (each callback may return an awaitable) before it acknowledges them. A
    channel that sends can then defer its confirmations there: a relay publishes a whole batch
    with its confirmations in flight, and waits for them once.
    """

    before_ack: list[Callable[[], Any]] = field(default_factory=list)
    redone: bool = False
    """The channel is handling the batch again after rolling it back."""
    message_ids: list[str] = field(default_factory=list)
    """The ids of the batch's messages, when the channel knows them before handing them out."""
    current: Hashable | None = None
    """A key for the message in hand, unique within the batch (not its id: several messages
    of a batch may share one, an event's copies for several subscribers do), set by a channel
    that can keep single messages back (see ``Unsent``); a sending channel tags its deferred
    sends with it."""
    forwarded: set[Hashable] = field(default_factory=set)
    """The keys of the messages whose handling was only a send to the next channel."""

    def run_before_ack(self) -> Unsent | None:
        """Run the ``before_ack`` callbacks (in sync code); the messages they could not send.

        Any other error propagates: nothing of the batch may then be acknowledged.
        """
        unsent: Unsent | None = None
        for callback in self.before_ack:
            try:
                callback()
            except Unsent as error:
                unsent = error if unsent is None else unsent.merge(error)
        return unsent

    async def arun_before_ack(self) -> Unsent | None:
        """``run_before_ack`` on an event loop, awaiting what the callbacks return."""
        unsent: Unsent | None = None
        for callback in self.before_ack:
            try:
                pending = callback()
                if pending is not None:
                    await pending
            except Unsent as error:
                unsent = error if unsent is None else unsent.merge(error)
        return unsent

    def unsent(self, failures: Collection[tuple[Hashable | None, BaseException]]) -> BaseException:
        """The error to raise for sends that failed, each tagged with the ``current`` key it
        was sent under: ``Unsent`` when each one's message can be kept back on its own."""
        sources = {source for source, _ in failures}
        first = next(iter(failures))[1]
        if None in sources or not sources <= self.forwarded:
            return first
        return Unsent({source for source in sources if source is not None}, first)


current_batch: ContextVar[Batch | None] = ContextVar("busway_batch", default=None)


@dataclass(frozen=True, slots=True)
class ChannelContext:
    """What a channel learns from the ``Messaging`` it belongs to."""

    clock: Callable[[], float]
    database: Any = None
    """The ``Messaging(database=...)`` Engine or AsyncEngine, if one is configured."""
    max_crashes: int | None = 3
    """``Messaging(max_crashes=...)``: a channel that pays to count the deaths of workers
    with a message in hand may skip it when this is None."""
    dead_letters: Any = None
    """The dead letter store: a channel that keeps the order of keyed messages may hold a
    key back while a letter of it waits there."""


Handle = Callable[[Delivery], None]
AsyncHandle = Callable[[Delivery], Awaitable[None]]


class Channel(ABC):
    """A named transport. Subclasses implement ``send`` and ``consume`` at least."""

    name: str
    holds_keyed_retries: bool = False
    """Whether a keyed message's delayed retry waits in the worker that has it, instead of
    going back to the channel: a channel whose order a message sent again would break (its
    later messages of the key would overtake it) says so."""

    def attach(self, context: ChannelContext) -> None:  # noqa: B027 - optional hook
        """Called once by ``Messaging`` before the channel is used."""

    def validate(self) -> list[str]:
        """Problems with the configuration, one sentence each, for start-up."""
        return []

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Create tables, queues or streams; must be safe to run again."""

    async def asetup(self) -> None:
        await asyncio.to_thread(self.setup)

    @abstractmethod
    def send(self, envelope: Envelope) -> None: ...

    async def asend(self, envelope: Envelope) -> None:
        await asyncio.to_thread(self.send, envelope)

    @abstractmethod
    def consume(self, handle: Handle, max_messages: int, wait: float) -> int:
        """Hand up to ``max_messages`` ready messages to ``handle``, one at a time.

        Waits up to ``wait`` seconds for a first message. Returns how many were handled;
        0 when none was ready. If ``handle`` raises, that message stays on the channel and
        the error propagates.
        """

    async def aconsume(self, handle: AsyncHandle, max_messages: int, wait: float) -> int:
        raise NotImplementedError(
            f"channel {self.name!r} ({type(self).__name__}) has no asyncio consumer; "
            "run it with messaging.run() instead of arun()"
        )

    def interrupt(self) -> None:  # noqa: B027 - optional hook
        """Wake this process's consumers waiting in ``consume`` for a message, so that a
        stopping worker returns at once; called from any thread. Without it, a wait ends
        at its timeout."""

    def depth(self) -> int | None:
        """How many messages wait on the channel, if the transport can tell cheaply."""
        return None

    def waiting(self, ordering_key: str) -> int | None:
        """How many messages of ``ordering_key`` wait on the channel, if it can tell."""
        return None

    def oldest_age(self) -> float | None:
        """Seconds the oldest waiting message has been available, if the transport can tell."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    async def aclose(self) -> None:
        self.close()
