"""Writing a message to a ``SqlChannel``'s table: through the transaction open on its database,
to commit or roll back with the writes around it (the outbox), or in a statement of its own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from busway.sql._async.scopes import abegin_writes
from busway.sql.database import Database
from busway.sql.statements import Statements
from busway.sql.transactions import Transaction


async def awrite(
    database: Database,
    sql: Statements,
    transaction: Transaction | None,
    row: dict[str, Any],
    wake: Callable[[], None],
) -> None:
    """Write ``row`` in ``transaction``, or on its own if None; ``wake`` the consumers in this
    process once it is committed."""
    if transaction is not None:
        assert isinstance(transaction.connection, AsyncConnection)
        await abegin_writes(transaction)
        await transaction.connection.exec_driver_sql(*sql.insert(transaction.connection, row))
        transaction.after_commit.append(wake)
        return
    async with database.aautocommit() as connection:
        await connection.exec_driver_sql(*sql.insert(connection, row))
    wake()
