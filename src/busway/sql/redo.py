"""Redoing a ``SqlChannel`` batch in a new transaction, and what one try leaves the next.

A batch is redone, nothing of it acknowledged, when a handler run without a savepoint failed
(``HandlerFailed``: that message's failure is then dealt with at once), when the batch could
not commit as a whole (``BatchRollback``: redone with a savepoint per handler), and when the
database ended its transaction or dropped its connection: under a handler's savepoint
(``TransactionLost``, that handler's failure), or under busway's own statements, the claim's
acknowledgement and the commit included. The last is bounded: a batch the database keeps
ending is given up after ``MAX_LOST`` redos, its error left to the worker. A handler that
catches the database's error and goes on, without a savepoint, is found out as it returns
(``check_alive``): by a note the engine's error hook left on the connection, or SQLite's
own word, with no round trip.
"""

from __future__ import annotations

import logging
import random
import weakref
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DBAPIError, PendingRollbackError
from sqlalchemy.ext.asyncio import AsyncConnection

from busway.channels.base import BatchRollback
from busway.sql.batch_io import GIVEN_UP, HandlerFailed

log = logging.getLogger("busway.sql")

MAX_LOST = 3
"""How many times in a row a batch is redone after the database ended its transaction
(beyond the once per message that a handler's own lost transaction costs)."""
FIRST_PAUSE = 0.05
"""Seconds before the first such redo, doubled each time: a deadlock's other party, or a
server that dropped connections, gets a moment."""

_SQLSTATES = {"25P02", "40001", "40P01", "55P03"}
"""PostgreSQL: transaction aborted by an earlier error, serialization failure, deadlock,
lock not available."""
_MYSQL_CODES = {1205, 1213, 1927, 2006, 2013, 4031}
"""MariaDB/MySQL: lock wait timeout, deadlock, connection killed, server gone, connection
lost, disconnected for inactivity."""
_SQLITE_CODES = {5, 6, 9}
"""SQLite: busy, locked, interrupted."""
_CONFLICT_SQLSTATES = {"40001", "40P01", "55P03"}
_CONFLICT_MYSQL_CODES = {1205, 1213}
_CONFLICT_SQLITE_CODES = {5, 6}
"""The same errors, but for those of a lost connection: a conflict with another
transaction's locks, which the next try of the same statement may get past."""


class TransactionEnded(Exception):
    """The database ended a batch's transaction under a handler that caught the error and
    went on, without a savepoint: what the batch wrote before is gone."""


def ended_by_database(error: BaseException) -> bool:
    """Whether ``error`` is the database ending a transaction that a new one may get
    through: a deadlock, a lock or serialization conflict, a dropped connection."""
    if isinstance(error, PendingRollbackError | TransactionEnded):
        return True  # the connection was found broken earlier in the transaction
    if not isinstance(error, DBAPIError):
        return False
    if error.connection_invalidated:
        return True
    return _coded(error, _SQLSTATES, _SQLITE_CODES, _MYSQL_CODES)


def conflicted(error: BaseException) -> bool:
    """Whether ``error`` is a conflict with another transaction (a deadlock, a lock not
    granted in time, a serialization failure), not a lost connection."""
    if not isinstance(error, DBAPIError) or error.connection_invalidated:
        return False
    return _coded(error, _CONFLICT_SQLSTATES, _CONFLICT_SQLITE_CODES, _CONFLICT_MYSQL_CODES)


def _coded(
    error: DBAPIError, sqlstates: set[str], sqlite_codes: set[int], mysql_codes: set[int]
) -> bool:
    """Whether the driver's error under ``error`` has one of these codes: a SQLSTATE
    (PostgreSQL), a primary result code (SQLite), or an error number (MariaDB/MySQL)."""
    original = error.orig
    sqlstate = getattr(original, "sqlstate", None)
    if isinstance(sqlstate, str):
        return sqlstate in sqlstates
    code = getattr(original, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in sqlite_codes
    arguments: tuple[object, ...] = getattr(original, "args", ())
    return bool(arguments) and arguments[0] in mysql_codes


@dataclass(eq=False)
class Redo:
    """What the tries of one batch share."""

    channel: str
    isolated: bool
    """Whether handlers run under a savepoint each."""
    failures: dict[int, BaseException] = field(default_factory=dict)
    """The errors of the messages whose failure is dealt with at once when redone."""
    handed: set[int] = field(default_factory=set)
    """The messages handed out in an earlier try: counted once."""
    claimed: bool = False
    """Whether the current try claimed messages: before, there is nothing to redo."""
    lost: int = 0
    conflicts: int = 0
    """Claims in a row that met another transaction's locks before they claimed anything."""

    def after(self, error: Exception) -> float:
        """Make ready to redo the batch that ``error`` ended; the pause before. Raises
        ``error`` when it is no reason to redo the batch, or one given up on."""
        claimed, self.claimed = self.claimed, False
        if isinstance(error, HandlerFailed):
            if error.seq in self.failures:  # its failure already known: lost again
                self._lose(error.error)
            self.failures[error.seq] = error.error
            return 0.0
        if isinstance(error, BatchRollback):
            self.isolated = True
            return 0.0
        if not claimed:
            return self._claim_again(error)
        if not ended_by_database(error):
            raise error
        self._lose(error)
        pause: float = FIRST_PAUSE * 2 ** (self.lost - 1) * random.uniform(0.5, 1.5)
        return pause

    def _claim_again(self, error: Exception) -> float:
        """A try ended before it claimed anything: nothing to redo. A claim that met another
        transaction's locks (under load, MariaDB's REPEATABLE READ deadlocks claims on each
        other's gap locks) is tried again after a pause, ``MAX_LOST`` times in a row at most;
        anything else, a lost connection included, is the worker's to wait out."""
        if not conflicted(error):
            raise error
        self.conflicts += 1
        if self.conflicts > MAX_LOST:
            raise error
        log.debug(
            "channel %r: the claim met another transaction's locks (%s); claiming again",
            self.channel,
            error.orig if isinstance(error, DBAPIError) else error,
        )
        pause: float = FIRST_PAUSE * 2 ** (self.conflicts - 1) * random.uniform(0.5, 1.5)
        return pause

    def _lose(self, error: BaseException) -> None:
        self.lost += 1
        if self.lost > MAX_LOST:
            log.error(
                "channel %r: the database ended the transaction of a batch %d times; "
                "giving the batch up for now, nothing of it acknowledged",
                self.channel,
                self.lost,
            )
            error.add_note(GIVEN_UP)
            raise error
        log.warning(
            "channel %r: the database ended the batch's transaction (%s: %s); nothing of it "
            "was acknowledged, redoing it in a new one",
            self.channel,
            type(error).__name__,
            error,
        )


_ENDED = "busway_transaction_ended"
_ROLLS_BACK_ALL = 1213
"""MariaDB/MySQL's deadlock: InnoDB rolls the whole transaction back, savepoints and all."""
_watched: weakref.WeakSet[Engine] = weakref.WeakSet()


def watch(engine: Engine) -> None:
    """Have ``engine``'s connections remember an error that ended their transaction, even
    one a handler caught and went on from: MariaDB then begins a new transaction at the next
    statement, SQLite commits each next statement on its own, PostgreSQL refuses them."""
    if engine not in _watched:
        _watched.add(engine)
        event.listen(engine, "handle_error", _note_ended)


def _note_ended(context: ExceptionContext) -> None:
    connection = context.connection
    if connection is None:
        return
    arguments: tuple[object, ...] = getattr(context.original_exception, "args", ())
    if (arguments and arguments[0] == _ROLLS_BACK_ALL) or (
        # Any error aborts a PostgreSQL transaction, but for a savepoint's.
        connection.dialect.name == "postgresql" and not connection.in_nested_transaction()
    ):
        connection.info[_ENDED] = True


def begin_watch(connection: Connection | AsyncConnection) -> None:
    """Forget what an earlier transaction on ``connection`` noted."""
    connection.info.pop(_ENDED, None)


def check_alive(connection: Connection | AsyncConnection) -> None:
    """Raise ``TransactionEnded`` if the database ended ``connection``'s transaction since
    ``begin_watch``; no round trip."""
    if connection.info.get(_ENDED) or not _sqlite_in_transaction(connection):
        raise TransactionEnded(
            "the database ended the batch's transaction under a handler that caught the "
            "error and went on; nothing of the batch is acknowledged, it is redone"
        )


def _sqlite_in_transaction(connection: Connection | AsyncConnection) -> bool:
    """SQLite's own word on whether a transaction is open (True on other databases)."""
    if connection.dialect.name != "sqlite":
        return True
    sync = connection.sync_connection if isinstance(connection, AsyncConnection) else connection
    assert sync is not None
    raw: Any = sync.connection.dbapi_connection
    raw = getattr(raw, "_connection", raw)  # aiosqlite's, under SQLAlchemy's adapter
    return bool(raw.in_transaction)
