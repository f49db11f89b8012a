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
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

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

from busway.sql.statements import Statements

log = logging.getLogger("busway.sql")

R = TypeVar("R")


def in_turn(rows: Sequence[R], crashes: Callable[[R], int]) -> list[R]:
    """The rows to hand out now: a suspect alone, or the rows before the first suspect."""
    for index, row in enumerate(rows):
        if crashes(row):
            return list(rows[:index]) if index else [row]
    return list(rows)


class InHand:
    """The statements on the in-hand table of one channel: noting, giving back, forgetting."""

    def __init__(
        self,
        messages: Table,
        table: Table,
        name: str,
        backend: str,
        claim: Select[Any],
        sql: Statements,
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
            # Committed without waiting for the write-ahead log to reach the disk: a note
            # must outlive its worker, which the commit gives (it is seen at once); only a
            # crash of the server in the next fraction of a second could lose it, and one
            # death would go uncounted.
            self._take: Any = text(
                f"INSERT INTO {table.name} (seq, channel, taken) "
                "SELECT seq, :channel, 1 FROM unnest(CAST(:seqs AS BIGINT[])) AS seq, "
                "(SELECT set_config('synchronous_commit', 'off', true)) AS unflushed "
                f"ON CONFLICT (seq) DO UPDATE SET taken = {table.name}.taken + 1"
            )
        elif backend == "mysql":
            self._take = mysql.insert(table).on_duplicate_key_update(more)
        else:
            self._take = sqlite.insert(table).on_conflict_do_update(
                index_elements=["seq"], set_=more
            )
        self.crashes = taken.label("crashes")
        """A claimed message's count of deaths, as a column."""
        self.claim = claim.add_columns(self.crashes)
        """``claim`` with each message's count of deaths, ``crashes``, read by a subquery,
        which ``FOR UPDATE`` does not lock: the note can still be written beside it."""
        windowed, _ = sql.claim(0, 0.0, windowed=True)
        self.claim_windowed = windowed.add_columns(taken.label("crashes"))
        """The windowed claim, with each message's count of deaths."""
        self.claimed_again = (
            select(*claim.selected_columns, (taken - 1).label("crashes"))
            .where(messages.c.seq.in_(bindparam("seqs", expanding=True)), sql.claimable)
            .order_by(*sql.order)
        )
        """The rows ``seqs`` a short transaction claimed and noted first (SQLite), with their
        count of deaths: their notes, less this delivery's own, read under the write lock. A
        worker that claimed and noted them too in between either handled them already (they
        are gone, notes and all) or died (its note counts), whichever ran first. A row that
        is no longer first of its key (a dead letter of it replayed in between) is left."""

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


def crashes_of(row: Row[Any]) -> int:
    """A claimed row's count of deaths."""
    return int(row.crashes)
