"""Scopes of a transaction: a savepoint around one handler in a transaction it joins, begun
at its first write, and the transaction a ``messaging.transaction(...)`` block joins or
opens."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncTransaction
from sqlalchemy.ext.asyncio.session import AsyncSession

from busway.sql.database import Database, refuse_other_database
from busway.sql.transactions import (
    Savepoint,
    Transaction,
    after_its_commit,
    current_transaction,
    lost,
    run_after_commit,
)


class asavepoint:
    """Undo what the block writes through ``transaction`` if it raises, and only that.

    The savepoint is promised on entry and begun by the first write (``begin_writes``).
    """

    __slots__ = ("promised", "transaction")

    def __init__(self, transaction: Transaction) -> None:
        self.transaction = transaction
        self.promised = Savepoint()

    async def __aenter__(self) -> None:
        self.transaction.savepoints.append(self.promised)

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: object
    ) -> None:
        self.transaction.savepoints.remove(self.promised)
        nested = self.promised.nested
        if self.transaction.connection.invalidated:
            raise lost(error, None)  # its savepoint went with the connection
        if isinstance(nested, AsyncTransaction):
            try:
                if kind is None:
                    await nested.commit()
                else:
                    await nested.rollback()
            except DBAPIError as ended:
                raise lost(error, ended)  # noqa: B904 - its cause is set
        if self.transaction.connection.invalidated:
            raise lost(error, None)


async def abegin_writes(transaction: Transaction) -> None:
    """Begin the savepoints promised and not begun yet: call before writing through
    ``transaction.connection``. A handler that never writes costs no savepoint."""
    for promised in transaction.savepoints:
        if promised.nested is None:
            assert isinstance(transaction.connection, AsyncConnection)
            promised.nested = await transaction.connection.begin_nested()


@asynccontextmanager
async def atransaction_scope(
    database: Database, session: AsyncSession | None = None
) -> AsyncIterator[AsyncSession]:
    """Join ``session``'s transaction, or open one (committed on success) if none is given."""
    if session is not None:
        connection = await session.connection()
        refuse_other_database(database, connection.engine.url)
        transaction = Transaction(database.key, connection, session, after_its_commit(session))
        token = current_transaction.set(transaction)
        try:
            yield session
        finally:
            current_transaction.reset(token)
        return
    async with database.async_engine.connect() as connection, connection.begin():
        opened = AsyncSession(bind=connection, join_transaction_mode="rollback_only")
        transaction = Transaction(database.key, connection, opened)
        token = current_transaction.set(transaction)
        try:
            yield opened
            await opened.flush()
        finally:
            current_transaction.reset(token)
    run_after_commit(transaction)
