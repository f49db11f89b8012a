"""What consuming one ``SqlChannel`` needs, made once the channel knows its database and its
context: the consuming functions (``busway.sql._async.consuming``) take this, not the channel."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Row

from busway.channels.base import Delivery
from busway.sql.crashes import InHand
from busway.sql.database import Database
from busway.sql.rows import delivery_of
from busway.sql.runs import RUN, Followers
from busway.sql.statements import Statements
from busway.sql.turns import Turns
from busway.sql.waiting import BUSY_PAUSE

Mode = Literal["transaction", "lease"]

held_back: ContextVar[dict[str, int] | None] = ContextVar("busway_sql_held_back", default=None)
"""For each channel this thread or task consumes, how many of its claims in a row found
messages due and none they could take: others have them, or the messages before them of
their keys. (Replaced, never changed in place: a context copied shares the dict.)"""


def _held(channel: str) -> int:
    counts = held_back.get()
    return 0 if counts is None else counts.get(channel, 0)


def _hold(channel: str, times: int) -> None:
    counts = held_back.get()
    if (0 if counts is None else counts.get(channel, 0)) != times:
        held_back.set({**(counts or {}), channel: times})


WINDOWED_SPELL = 5.0
"""Seconds the consumers of a channel in a process claim among the messages due first only,
after a claim found messages due and none it could take."""

SLOW_CLAIM = 0.005
"""Seconds a PostgreSQL claim may take before the next ones are planned by the dequeue index
(``busway.sql.statements.PLANNED``), for ``PLANNED_SPELL`` seconds."""
PLANNED_SPELL = 60.0

RELAY_BATCH_FACTOR = 5
"""After a full batch of messages that were all only sent on (a relay's), the next claim takes
up to this many times ``batch_size``: such a batch has no handler to run again, and fewer,
larger batches keep more of a broker's confirms in flight."""


@dataclass(eq=False, slots=True)
class SqlConsumer:
    name: str
    database: Database
    sql: Statements
    clock: Callable[[], float]
    mode: Mode
    batch_size: int
    redo_batches: bool
    visibility_timeout: float
    in_hand: InHand | None
    """The notes of the messages in hand in ``transaction`` mode, with the crash-loop guard."""
    guarded: bool
    """Whether the crash-loop guard is on (``Messaging(max_crashes=...)``)."""
    wait_idle: Callable[[float, float], None]
    """Wait at most that many seconds for a message, after a claim found none; the second
    number: how long for messages due now but not taken (``busy_pause()``)."""
    await_idle: Callable[[float, float], Awaitable[None]]
    relaying: bool = False
    """Whether the last batch was full and only sent on: the next claim takes more."""
    windowed_until: float = 0.0
    """Until when (``time.monotonic()``) claims look at the messages due first only; shared,
    like all of this, by the channel's consumers in this process."""
    narrowed_until: float = 0.0
    """Until when (``time.monotonic()``) claims take a quarter of a batch (``heads_limit``):
    a claim found messages due and none it could take less than ``WINDOWED_SPELL`` ago."""
    planned_until: float = 0.0
    """Until when (``time.monotonic()``) claims are planned by the dequeue index: a claim
    took longer than ``SLOW_CLAIM``."""
    poll_interval: float = 0.5
    followers: Followers = field(init=False)
    """The query of the followers of a claim's first messages of keys (``takes_runs``)."""
    turns: Turns = field(default_factory=Turns)
    """Where the channel's consumers take turns (``claims_first``): those of this process,
    and those of every process on the same SQLite file (``busway.sql.turns``)."""

    @contextmanager
    def turn(self) -> Iterator[None]:
        """This thread's turn to claim and handle a batch, where batches take turns."""
        if not self.claims_first:
            yield
            return
        with self.turns.turn():
            yield

    @asynccontextmanager
    async def aturn(self) -> AsyncIterator[None]:
        """``turn`` for the tasks of an event loop."""
        if not self.claims_first:
            yield
            return
        async with self.turns.aturn():
            yield

    def __post_init__(self) -> None:
        columns = list(self.sql.columns)
        if self.in_hand is not None:
            columns.append(self.in_hand.crashes)
        self.followers = Followers(self.sql.table, self.name, columns)

    def plans_claims(self) -> bool:
        """Whether the next claim on PostgreSQL is planned by the dequeue index first, at two
        statements' cost (``busway.sql.statements.PLANNED``): for ``PLANNED_SPELL`` seconds
        after a claim took longer than ``SLOW_CLAIM``, and while claims are windowed. A claim
        of a short queue is quick whatever its plan; one of a deep queue whose statistics
        say it is nearly empty (never analyzed) reads and sorts every due message, once."""
        now = time.monotonic()
        return now < self.planned_until or now < self.windowed_until

    def claim_took(self, seconds: float) -> None:
        """A claim not planned first took ``seconds``."""
        if seconds > SLOW_CLAIM:
            self.planned_until = time.monotonic() + PLANNED_SPELL

    def takes_runs(self) -> bool:
        """Whether a claim takes runs of each key (``busway.sql.runs``): while this process's
        consumers are held back by the others' keys (its claims windowed), on PostgreSQL, in
        ``transaction`` mode, unless the batches are only forwarded (a relay: each key's next
        message waits for its send to be confirmed), or the channel takes higher priorities
        first (a follower would go before another key's first message of a higher one)."""
        return (
            self.mode == "transaction"
            and self.database.backend == "postgresql"
            and not self.sql.priorities
            and not self.relaying
            and self.windowed()
        )

    def heads_limit(self, limit: int) -> int:
        """How many messages a claim of ``limit`` takes before any runs.

        While this process's consumers are held back, the keys are in fewer hands than there
        are consumers. On PostgreSQL a claim then takes a quarter of its batch in first
        messages of keys, and runs of their followers fill it again (``takes_runs``). On
        MariaDB, where runs would deadlock (``busway.sql.runs``), a claim takes a quarter of
        its batch alone while held back less than ``WINDOWED_SPELL`` ago
        (``narrowed_until``), unless it only forwards (a relay's batches grow instead):
        smaller batches spread the keys over more consumers."""
        if self.takes_runs():
            return max(1, limit // RUN)
        if (
            self.database.backend == "mysql"
            and not self.relaying
            and time.monotonic() < self.narrowed_until
        ):
            return max(1, limit // RUN)
        return limit

    @property
    def claims_first(self) -> bool:
        """Whether a batch is claimed and noted in hand in a transaction of its own first:
        on SQLite, where the batch's transaction holds the write lock, a note written
        beside it would wait for that lock."""
        return self.in_hand is not None and self.database.is_sqlite

    def windowed(self) -> bool:
        """Whether claims look at the messages due first only, for now (``found_nothing``)."""
        return time.monotonic() < self.windowed_until

    def claim(self, limit: int, bound: Any = None) -> tuple[Any, dict[str, int]]:
        """The claim of up to ``limit`` messages due now, and its parameters: with the
        messages' count of deaths where they are noted in hand, and windowed for a while
        after a claim found nothing it could take (``found_nothing``); on MariaDB, windowed
        only up to ``bound``, the row of ``Statements.window_bound`` (None: there are fewer
        messages due than the window holds)."""
        windowed = self.windowed() and (self.database.backend != "mysql" or bound is not None)
        statement, parameters = self.sql.claim(limit, self.clock(), windowed, bound)
        if self.in_hand is not None:
            statement = self.in_hand.claim_windowed if windowed else self.in_hand.claim
        return statement, parameters

    def found_nothing(self, next_due: int | None) -> None:
        """A claim found nothing to take, and the channel's earliest message is due at
        ``next_due`` (milliseconds), or none is there.

        Messages due now and not taken are in other workers' hands, or wait behind those of
        their keys that are: the consumer is held back (``held_back``), and waits longer
        before each claim that finds nothing again (``busy_pause``). A claim of the whole
        channel reads every waiting message to find that out, and idle consumers that look
        again and again would load the database most while it is busiest: for
        ``WINDOWED_SPELL`` seconds this process's claims look at the ``WINDOW`` messages due
        first only (``busway.sql.statements.window``), then one claim of the whole channel
        finds the first messages of keys past them, if any. (SQLite, one writer at a time,
        never meets another worker's messages.)"""
        if next_due is None or next_due > self.clock() * 1000:
            _hold(self.name, 0)
            return
        _hold(self.name, _held(self.name) + 1)
        now = time.monotonic()
        if not self.database.is_sqlite:
            self.narrowed_until = now + WINDOWED_SPELL  # while held back, and a spell after
            if now >= self.windowed_until:
                self.windowed_until = now + WINDOWED_SPELL

    def claimed(self) -> None:
        """A claim took messages: this consumer is held back no longer."""
        _hold(self.name, 0)

    def busy_pause(self) -> float:
        """How long this consumer waits, held back, before it claims again: ``BUSY_PAUSE``
        doubled at each claim in a row that found nothing, up to ``poll_interval``. Each
        consumer (thread or task) backs off by itself: the keys free for the taking are
        taken by the consumers whose batches just freed them, and one that found none
        would otherwise look again at every batch of the others, for nothing."""
        return min(BUSY_PAUSE * 2.0 ** max(0, _held(self.name) - 1), self.poll_interval)

    def held_back(self) -> bool:
        """Whether this consumer's last claim found messages due and none it could take."""
        return _held(self.name) > 0

    def claim_size(self) -> int:
        return self.batch_size * RELAY_BATCH_FACTOR if self.relaying else self.batch_size

    def delivery(
        self, row: Row[Any], connection: Any, isolated: bool = True, **known: Any
    ) -> Delivery:
        return delivery_of(row, self.name, connection, isolated, **known)
