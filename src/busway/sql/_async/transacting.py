"""A handler in a database transaction (``TransactionInterceptor``): joining the one open,
under a savepoint that its first write begins (none in a channel's batch), or opening one of
its own; and the Session and Connection it is given."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.ext.asyncio.session import AsyncSession

from busway.channels.base import BatchRollback
from busway.interceptors import Invocation
from busway.sql._async.scopes import abegin_writes, asavepoint
from busway.sql.abandoned import afreed_if_abandoned, araise_if_abandoned
from busway.sql.database import Database
from busway.sql.transactions import Transaction, current_transaction, in_batch, run_after_commit


async def arun_in_transaction(
    database: Database,
    joined: Transaction | None,
    invocation: Invocation,
    proceed: Callable[[], Awaitable[Any]],
    *,
    opens: bool,
    eager: bool,
) -> Any:
    """Run the handler in ``joined``, the transaction open on ``database``; with none, in one
    of its own if it ``opens`` one, else outside any. ``eager``: begin its savepoint at once."""
    if joined is not None:
        if in_batch(invocation, joined):
            try:
                return await _acall(joined, invocation, proceed, eager)
            except Exception as error:
                raise BatchRollback(str(error)) from error
        async with asavepoint(joined):
            return await _acall(joined, invocation, proceed, eager)
    if not opens:
        return await proceed()
    async with (
        database.async_engine.connect() as connection,
        afreed_if_abandoned(connection),
        connection.begin(),
    ):
        transaction = Transaction(database.key, connection)
        token = current_transaction.set(transaction)
        try:
            result = await _acall(transaction, invocation, proceed, eager)
            araise_if_abandoned()  # past its time limit, and retried: commit nothing
        finally:
            current_transaction.reset(token)
    run_after_commit(transaction)
    return result


async def _acall(
    transaction: Transaction,
    invocation: Invocation,
    proceed: Callable[[], Awaitable[Any]],
    eager: bool,
) -> Any:
    connection = transaction.connection
    assert isinstance(connection, AsyncConnection)
    sessions: list[AsyncSession] = []

    def session() -> AsyncSession:
        # Made at the handler's first use; a handler that asks for one is ``eager``.
        if not sessions:
            sessions.append(AsyncSession(bind=connection, join_transaction_mode="rollback_only"))
        return sessions[0]

    if eager:
        await abegin_writes(transaction)
    invocation.resources[AsyncConnection] = connection
    invocation.resources[AsyncSession] = session
    try:
        async with afreed_if_abandoned(connection):
            result = await proceed()
        if sessions:
            await sessions[0].flush()
        return result
    finally:
        if sessions:
            await sessions[0].close()
