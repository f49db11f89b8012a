# Generated from src/busway/sql/_async/recording.py by tools/unasync.py: do not edit.
# Change the asyncio source, then run `make generate`.
"""The inbox's records (``DeduplicationInterceptor``): a handler's written before it runs, or
noted for its batch's flush, which writes them all in one statement."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from busway.channels.base import BatchRollback
from busway.sql._sync.scopes import begin_writes
from busway.sql.transactions import Transaction

if TYPE_CHECKING:
    from busway.sql.inbox import DeferredRecords, Inbox


def once(
    deferred: DeferredRecords,
    transaction: Transaction,
    row: dict[str, Any],
    proceed: Callable[[], Any],
    deferrable: bool,
) -> Any:
    """Run the handler unless its record ``row`` exists: the record noted for the batch's
    flush if ``deferrable``, else written in ``transaction`` first."""
    if deferrable:
        if not deferred.defer(transaction, row):
            return None
        try:
            return proceed()
        except BaseException:
            deferred.undefer(transaction, row)
            raise
    if not recorded(deferred.inbox, transaction, row):
        return None  # taken effect already
    return proceed()


def recorded(inbox: Inbox, transaction: Transaction, row: dict[str, Any]) -> bool:
    """Write the record ``row`` in ``transaction``: whether it is new."""
    assert isinstance(transaction.connection, Connection)
    begin_writes(transaction)
    return bool(record(inbox, transaction.connection, [row]))


def record(inbox: Inbox, connection: Connection, rows: list[dict[str, Any]]) -> int:
    """Write the records; how many were new."""
    return inbox.inserted(connection.execute(inbox.insert, rows))


def flush(inbox: Inbox, connection: Connection, rows: list[dict[str, Any]]) -> None:
    """Write a batch's records; if one existed already, the batch is rolled back."""
    if record(inbox, connection, rows) != len(rows):
        raise BatchRollback("a message of the batch was handled before")
