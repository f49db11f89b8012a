"""Counting the deaths of workers with a message in hand, for the crash-loop guard.

In ``transaction`` mode a batch is claimed, handled and acknowledged in one transaction, so a
worker that dies mid-batch leaves nothing behind: its transaction rolls back. Before it hands
a batch out, the worker therefore notes the batch's messages as taken in a table of their own
(``<table>_in_hand``), committed at once, outside the batch's transaction; the acknowledgement
deletes each note with its message, and a batch that ends otherwise, its worker alive, gives
its notes back. A note found at a claim is a delivery that ended with its worker dead.

On PostgreSQL and MariaDB the note is written on a second connection in autocommit while the
batch's transaction holds its rows: another table, so no lock is in the way. On SQLite the
batch's transaction holds the database's one write lock: the worker claims and notes the
batch in a short transaction first, then claims exactly those rows for the batch.

A message taken before (a suspect) is handed out alone, so that a next death counts against
it alone: a batch stops before its first suspect. In ``lease`` mode, the lease's own count
(``deliveries``, given back with a released lease) is the count of deaths.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import (
    Select,
    Table,
    bindparam,
    delete,
    func,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.engine import Row
from sqlalchemy.exc import DBAPIError

from busway.sql.batch_io import Execute, Io, StaleClaim
from busway.sql.waiting import next_due

if TYPE_CHECKING:
    from busway.sql.channel import SqlChannel

log = logging.getLogger("busway.sql")

R = TypeVar("R")


def in_turn(rows: Sequence[R], crashes: Callable[[R], int]) -> list[R]:
    """The rows to hand out now: a suspect alone, or the rows before the first suspect."""
    for index, row in enumerate(rows):
        if crashes(row):
            return list(rows[:index]) if index else [row]
    return list(rows)


@dataclass(frozen=True, slots=True)
class Aside:
    """I/O of a batch: a statement run on a connection of its own and committed at once,
    outside the batch's transaction."""

    statement: Any
    parameters: Any = None


class InHand:
    """The statements on the in-hand table of one channel: noting, giving back, forgetting."""

    def __init__(
        self, messages: Table, table: Table, name: str, backend: str, claim: Select[Any]
    ) -> None:
        self.messages = messages
        self.table = table
        self.name = name
        self.backend = backend
        taken = func.coalesce(
            select(table.c.taken).where(table.c.seq == messages.c.seq).scalar_subquery(), 0
        )
        more = {"taken": table.c.taken + literal_column("1")}  # no parameter: PyMySQL
        # writes the rows of an INSERT run with many into one statement only without one
        if backend == "postgresql":
            self._take: Any = text(
                f"INSERT INTO {table.name} (seq, channel, taken) "
                "SELECT seq, :channel, 1 FROM unnest(CAST(:seqs AS BIGINT[])) AS seq "
                f"ON CONFLICT (seq) DO UPDATE SET taken = {table.name}.taken + 1"
            )
        elif backend == "mysql":
            self._take = mysql.insert(table).on_duplicate_key_update(more)
        else:
            self._take = sqlite.insert(table).on_conflict_do_update(
                index_elements=["seq"], set_=more
            )
        self.claim = claim.add_columns(taken.label("crashes"))
        """``claim`` with each message's count of deaths, ``crashes``, read by a subquery,
        which ``FOR UPDATE`` does not lock: the note can still be written beside it."""
        self.claimed_again = (
            select(*claim.selected_columns, (taken - 1).label("crashes"))
            .where(messages.c.seq.in_(bindparam("seqs", expanding=True)))
            .order_by(messages.c.available_at, messages.c.seq)
        )
        """The rows ``seqs`` a short transaction claimed and noted first (SQLite), with their
        count of deaths: their notes, less this delivery's own, read under the write lock. A
        worker that claimed and noted them too in between either handled them already (they
        are gone, notes and all) or died (its note counts), whichever ran first."""

    def take(self, seqs: list[int]) -> tuple[Any, Any]:
        """Note the messages ``seqs`` as taken once more, in one statement made once (one
        with the rows written in it would compile anew each time)."""
        if self.backend == "postgresql":
            return self._take, {"seqs": seqs, "channel": self.name}
        return self._take, [{"seq": seq, "channel": self.name, "taken": 1} for seq in seqs]

    def give_back(self, seqs: list[int]) -> list[tuple[Any, Any]]:
        """Count out a delivery of ``seqs`` that ended with its worker alive; a note that
        counts no delivery any more goes."""
        table = self.table
        less = update(table).values(taken=table.c.taken - 1)
        gone = delete(table).where(table.c.taken <= 0)
        if self.backend == "mysql":
            keys = [{"key": seq} for seq in seqs]
            by_key = table.c.seq == bindparam("key")
            return [(less.where(by_key), keys), (gone.where(by_key), keys)]
        return [
            (less.where(table.c.seq.in_(seqs)), None),
            (gone.where(table.c.seq.in_(seqs)), None),
        ]

    def acknowledge(self, seqs: list[int]) -> list[tuple[Any, Any]]:
        """Delete the messages ``seqs`` and their notes: one statement on PostgreSQL, one a
        message on MariaDB (as its plain acknowledgement), two on SQLite."""
        messages, notes = self.messages.name, self.table.name
        if self.backend == "postgresql":
            both = text(
                f"WITH noted AS (DELETE FROM {notes} WHERE seq = ANY(:seqs)) "
                f"DELETE FROM {messages} WHERE seq = ANY(:seqs)"
            )
            return [(both, {"seqs": seqs})]
        if self.backend == "mysql":
            both = text(
                f"DELETE m, n FROM {messages} AS m LEFT JOIN {notes} AS n ON n.seq = m.seq "
                "WHERE m.seq = :key"
            )
            return [(both, [{"key": seq} for seq in seqs])]
        return [
            (delete(self.table).where(self.table.c.seq.in_(seqs)), None),
            (delete(self.messages).where(self.messages.c.seq.in_(seqs)), None),
        ]


def claim_batch(
    channel: SqlChannel, limit: int, claimed: list[int] | None, taken: list[int]
) -> Generator[Io | Aside, Any, list[Row[Any]]]:
    """The rows of ``channel``'s batch; with the crash-loop guard, noted in hand outside the
    batch's transaction before they are handed out (``taken`` gets them), and with their count
    of deaths. ``claimed``: the rows ``claim_first`` claimed and noted (SQLite)."""
    in_hand = channel._in_hand
    statement, parameters = channel._sql.claim(limit, channel._clock())
    try:
        if in_hand is None:
            return list((yield Execute(statement, parameters)).all())
        if claimed is not None:
            return list((yield Execute(in_hand.claimed_again, {"seqs": claimed})).all())
        found = (yield Execute(in_hand.claim, parameters)).all()
    except DBAPIError as error:
        if error.connection_invalidated:
            raise StaleClaim(error) from error
        raise
    rows = in_turn(found, _crashes)
    if rows:
        seqs = [row.seq for row in rows]
        yield Aside(*in_hand.take(seqs))
        taken += seqs
    return rows


def claim_first(channel: SqlChannel, limit: int) -> Generator[Io, Any, list[int]]:
    """Claim a batch and note it in hand, in a transaction of its own; the rows noted."""
    in_hand = channel._in_hand
    assert in_hand is not None
    _, parameters = channel._sql.claim(limit, channel._clock())
    rows = in_turn((yield Execute(in_hand.claim, parameters)).all(), _crashes)
    if not rows:
        next_due.set((channel.name, (yield Execute(channel._sql.next_due())).scalar()))
        return []
    seqs = [row.seq for row in rows]
    yield Execute(*in_hand.take(seqs))
    return seqs


def acknowledge(channel: SqlChannel, done: list[int], taken: list[int]) -> Generator[Io, Any, None]:
    """Delete the messages ``done`` (and their notes); count out the other ones taken."""
    in_hand = channel._in_hand
    if in_hand is None:
        if done:
            yield Execute(*channel._sql.ack(done))
        return
    if done:
        for statement in in_hand.acknowledge(done):
            yield Execute(*statement)
    finished = set(done)
    left = [seq for seq in taken if seq not in finished]
    for statement in in_hand.give_back(left) if left else ():
        yield Execute(*statement)


def _crashes(row: Row[Any]) -> int:
    return int(row.crashes)
