"""Deduplication: the inbox that makes a message take effect once per handler.

Before a handler's effects commit, busway records ``(message key, handler)`` under a unique
constraint in the same transaction. A second delivery of the same message, one after the
other or at the same moment on another worker, finds the record and is skipped. The key is
the message id unless ``Messaging(..., deduplicate_by=...)`` says otherwise.

In a SQL channel's batch, nothing is read first: the records of the whole batch are written
in one statement just before the acknowledgement, and the unique index says which were new,
whatever the planner's statistics. If one already existed, the batch is rolled back and
handled again one handler at a time, each record written before its handler runs.
"""

from __future__ import annotations

import functools
import hashlib
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import MetaData, Table, delete
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from busway.channels.base import Batch, current_batch
from busway.interceptors import HandlerInfo, Interceptor, Invocation
from busway.message import ID, Message
from busway.sql._async import recording as arecording
from busway.sql._sync import recording
from busway.sql.creating import create_table, has_table, set_up
from busway.sql.database import Database
from busway.sql.schema import inbox_table
from busway.sql.transactions import Transaction, blocking, open_transaction

KeyFunction = Callable[[Message[Any]], str | None]
KEY_LENGTH = 200
"""The length of ``busway_inbox.message_key``."""


def message_id(message: Message[Any]) -> str | None:
    return _text(message.headers.get(ID))


def key_function(by: str | KeyFunction | None) -> KeyFunction:
    """How to key messages: their id (None), a header (``"header:name"``), a payload field
    (``"payload:field"``), or any function of the message.

    A message the key leaves out (no such header or field, or the function returns None) is
    keyed by its id: a redelivery of it still takes effect once.
    """
    if by is None:
        return message_id
    if callable(by):
        return by
    source, _, name = by.partition(":")
    if source == "header" and name:
        return lambda message: _text(message.headers.get(name))
    if source == "payload" and name:
        return lambda message: _text(_field(message.payload, name))
    raise ValueError(
        f"deduplicate_by={by!r} is not understood; use 'header:NAME', 'payload:FIELD' or a "
        "function of the message"
    )


def _field(payload: Any, name: str) -> Any:
    if isinstance(payload, dict):
        return payload.get(name)
    return getattr(payload, name, None)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


class Inbox:
    """The ``busway_inbox`` table of one database."""

    def __init__(self, database: Database, table: str = "busway_inbox") -> None:
        self.database = database
        self.table: Table = inbox_table(MetaData(), table)
        database.tables.add(table)

    def setup(self) -> None:
        set_up(self.database, has_table(self.table), create_table(self.table))

    @functools.cached_property
    def insert(self) -> Any:
        """Insert records, skipping those that exist: the unique index finds them, with no
        plan that statistics could choose."""
        backend, key = self.database.backend, [self.table.c.message_key, self.table.c.handler]
        if backend == "postgresql":
            # psycopg reports no row count for many rows; count the rows returned instead.
            return (
                postgresql.insert(self.table)
                .on_conflict_do_nothing(index_elements=key)
                .returning(self.table.c.message_key)
            )
        if backend == "sqlite":
            return sqlite.insert(self.table).on_conflict_do_nothing(index_elements=key)
        return mysql.insert(self.table).prefix_with("IGNORE")

    def inserted(self, result: Any) -> int:
        """How many records the result of ``insert`` wrote: those that were new."""
        if self.database.backend == "postgresql":
            return len(result.all())
        return int(result.rowcount)

    def cleanup(self, older_than: float) -> int:
        """Forget records older than ``older_than`` seconds; returns how many."""
        cutoff = int((time.time() - older_than) * 1000)
        with self.database.engine.begin() as connection:
            result = connection.execute(delete(self.table).where(self.table.c.handled_at < cutoff))
        return int(result.rowcount)


class DeduplicationInterceptor(Interceptor):
    """Skips a handler for a message it has already taken effect for."""

    order = 900

    def __init__(self, inbox: Inbox, key: KeyFunction = message_id) -> None:
        self.inbox = inbox
        self.key = key
        self._deferred = DeferredRecords(inbox)

    def applies_to(self, handler: HandlerInfo) -> bool:
        return handler.transactional is not False

    def _row(self, invocation: Invocation) -> dict[str, Any] | None:
        if invocation.delivery is None:
            return None
        key = self.key(invocation.message) or message_id(invocation.message)
        if key is None:
            return None
        if len(key) > KEY_LENGTH:  # a long custom key: its digest fits the column
            key = "sha256:" + hashlib.sha256(key.encode()).hexdigest()
        return {
            "message_key": key,
            "handler": invocation.handler.name,
            "handled_at": int(time.time() * 1000),
        }

    def _transaction(self, asynchronous: bool) -> Transaction | None:
        return open_transaction(self.inbox.database.key, asynchronous)

    def around(self, invocation: Invocation, proceed: Callable[[], Any]) -> Any:
        row = self._row(invocation)
        transaction = self._transaction(asynchronous=False) if row else None
        if row is None or transaction is None:
            return proceed()
        deferrable = self._deferrable(invocation, transaction)
        return recording.once(self._deferred, transaction, row, proceed, deferrable)

    async def aaround(self, invocation: Invocation, proceed: Callable[[], Awaitable[Any]]) -> Any:
        row = self._row(invocation)
        if row is None:
            return await proceed()
        transaction = self._transaction(asynchronous=True)
        if transaction is None:
            if not invocation.handler.is_coroutine:
                return self.around(invocation, blocking(proceed))
            # An async def handler run by a sync worker records in the worker's transaction.
            joined = self._transaction(asynchronous=False)
            if joined is not None and not recording.recorded(self.inbox, joined, row):
                return None
            return await proceed()
        deferrable = self._deferrable(invocation, transaction)
        return await arecording.aonce(self._deferred, transaction, row, proceed, deferrable)

    def _deferrable(self, invocation: Invocation, transaction: Transaction) -> bool:
        """Whether the record can wait for the batch's flush: in a channel's batch keyed by
        message ids it knows up front, unless the batch is being redone."""
        delivery = invocation.delivery
        batch = current_batch.get()
        if (
            self.key is not message_id
            or delivery is None
            or delivery.transaction is None
            or batch is None
            or batch.redone
            or not batch.message_ids
        ):
            return False
        # The batch's own transaction, whose flush writes the records: not the sync view of an
        # asyncio claim that a def handler works in, which records at once instead.
        return transaction.connection is delivery.transaction


class DeferredRecords:
    """The records that the handlers of a channel's batch defer to the batch's flush."""

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox
        self._batches: weakref.WeakKeyDictionary[Batch, set[tuple[str, str]]] = (
            weakref.WeakKeyDictionary()
        )

    def _noted(self) -> set[tuple[str, str]]:
        """The records the current batch has noted for its flush so far."""
        batch = current_batch.get()
        assert batch is not None
        noted = self._batches.get(batch)
        if noted is None:
            noted = self._batches[batch] = set()
        return noted

    def defer(self, transaction: Transaction, row: dict[str, Any]) -> bool:
        """Note the record for the batch's flush; False if the batch noted it already (the
        same message twice in one batch)."""
        record = (row["message_key"], row["handler"])
        noted = self._noted()
        if record in noted:
            return False
        pending = transaction.pending.setdefault(self, [])
        if not pending:
            transaction.before_commit.append(lambda: self._flush(transaction))
        noted.add(record)
        pending.append(row)
        return True

    def undefer(self, transaction: Transaction, row: dict[str, Any]) -> None:
        """The handler failed and its savepoint is undone: so is its record."""
        pending = transaction.pending.get(self, [])
        if row in pending:
            pending.remove(row)
        self._noted().discard((row["message_key"], row["handler"]))

    def _flush(self, transaction: Transaction) -> Awaitable[None] | None:
        rows = transaction.pending.pop(self, [])
        if not rows:
            return None
        if isinstance(transaction.connection, AsyncConnection):
            return arecording.aflush(self.inbox, transaction.connection, rows)
        recording.flush(self.inbox, transaction.connection, rows)
        return None
