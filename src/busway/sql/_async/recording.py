"""The inbox's records (``DeduplicationInterceptor``): a handler's written before it runs, or
noted for its batch's flush, which writes them all in one statement."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncConnection

from busway.channels.base import BatchRollback
from busway.sql._async.scopes import abegin_writes
from busway.sql.transactions import Transaction

if TYPE_CHECKING:
    from busway.sql.inbox import DeferredRecords, Inbox


async def aonce(
    deferred: DeferredRecords,
    transaction: Transaction,
    row: dict[str, Any],
    proceed: Callable[[], Awaitable[Any]],
    deferrable: bool,
) -> Any:
    """Run the handler unless its record ``row`` exists: the record noted for the batch's
    flush if ``deferrable``, else written in ``transaction`` first."""
    if deferrable:
        if not deferred.defer(transaction, row):
            return None
        try:
            return await proceed()
        except BaseException:
            deferred.undefer(transaction, row)
            raise
    if not await arecorded(deferred.inbox, transaction, row):
        return None  # taken effect already
    return await proceed()


async def arecorded(inbox: Inbox, transaction: Transaction, row: dict[str, Any]) -> bool:
    """Write the record ``row`` in ``transaction``: whether it is new."""
    assert isinstance(transaction.connection, AsyncConnection)
    await abegin_writes(transaction)
    return bool(await arecord(inbox, transaction.connection, [row]))


async def arecord(inbox: Inbox, connection: AsyncConnection, rows: list[dict[str, Any]]) -> int:
    """Write the records; how many were new."""
    return inbox.inserted(await connection.execute(inbox.insert, rows))


async def aflush(inbox: Inbox, connection: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Write a batch's records; if one existed already, the batch is rolled back."""
    if await arecord(inbox, connection, rows) != len(rows):
        raise BatchRollback("a message of the batch was handled before")
