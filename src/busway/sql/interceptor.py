"""The interceptor that runs handlers in a database transaction."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from busway.channels.base import BatchRollback
from busway.handlers import Kind
from busway.interceptors import HandlerInfo, Interceptor, Invocation
from busway.sql._async import transacting as atransacting
from busway.sql._async.scopes import abegin_writes
from busway.sql._sync import transacting
from busway.sql._sync.scopes import savepoint
from busway.sql.database import Database
from busway.sql.transactions import (
    Transaction,
    blocking,
    current_transaction,
    in_batch,
    open_transaction,
)


class TransactionInterceptor(Interceptor):
    """Runs handlers in a database transaction and hands them its Session or Connection.

    Command handlers open one by default, other handlers when they ask for a Session or a
    Connection; ``transactional=`` on the handler marker decides otherwise. Any handler called
    while a transaction is open (a nested send, or a message claimed from a SQL channel)
    joins it, under a savepoint so that its failure undoes only its own writes; the savepoint
    begins only once the handler writes (asks for a Session or Connection, sends through an
    outbox), so a handler that never touches the database costs no round trip. In a SQL
    channel's batch, savepoints are skipped until a handler fails: then the batch is rolled
    back and handled again with them.
    """

    order = 800
    requires_aaround = True  # on the asyncio path it joins the open asyncio transaction

    def __init__(
        self, database: Database, wants_database: set[str], wants_async_database: set[str]
    ) -> None:
        self.database = database
        self.wants_database = wants_database
        self.wants_async_database = wants_async_database
        self.eager_savepoints = False
        """Begin each handler's savepoint at once, not at its first write (an interceptor
        inside this one may write through the transaction)."""

    def applies_to(self, handler: HandlerInfo) -> bool:
        return handler.transactional is not False

    def _opens_transaction(self, handler: HandlerInfo) -> bool:
        if handler.transactional is not None:
            return handler.transactional
        return handler.kind is Kind.COMMAND or handler.name in self.wants_database

    def _eager(self, invocation: Invocation) -> bool:
        return self.eager_savepoints or invocation.handler.name in self.wants_database

    def around(self, invocation: Invocation, proceed: Callable[[], Any]) -> Any:
        return transacting.run_in_transaction(
            self.database,
            open_transaction(self.database.key, asynchronous=False),
            invocation,
            proceed,
            opens=self._opens_transaction(invocation.handler),
            eager=self._eager(invocation),
        )

    async def aaround(self, invocation: Invocation, proceed: Callable[[], Awaitable[Any]]) -> Any:
        joined = open_transaction(self.database.key, asynchronous=True)
        if not invocation.handler.is_coroutine:
            # A def handler on the asyncio path works with a sync Session: in an open asyncio
            # transaction, through that transaction's own sync connection.
            if joined is None:
                return self.around(invocation, blocking(proceed))
            assert isinstance(joined.connection, AsyncConnection)
            await abegin_writes(joined)  # its writes go through another Transaction object
            return await joined.connection.run_sync(
                lambda connection: self._through(connection, invocation, proceed)
            )
        joined_sync = open_transaction(self.database.key, asynchronous=False)
        if joined is None and joined_sync is not None:
            return await self._in_sync_transaction(invocation, joined_sync, proceed)
        return await atransacting.arun_in_transaction(
            self.database,
            joined,
            invocation,
            proceed,
            opens=self._opens_transaction(invocation.handler),
            eager=self._eager(invocation),
        )

    def _through(
        self, connection: Connection, invocation: Invocation, proceed: Callable[[], Awaitable[Any]]
    ) -> Any:
        token = current_transaction.set(Transaction(self.database.key, connection))
        try:
            return self.around(invocation, blocking(proceed))
        finally:
            current_transaction.reset(token)

    async def _in_sync_transaction(
        self,
        invocation: Invocation,
        joined: Transaction,
        proceed: Callable[[], Awaitable[Any]],
    ) -> Any:
        """An async def handler run by a sync worker: it joins the worker's transaction."""
        if invocation.handler.name in self.wants_async_database:
            raise RuntimeError(
                f"async def handler {invocation.handler.name} asks for an AsyncSession or "
                "AsyncConnection, but runs inside a sync worker's transaction; consume its "
                "channel with `await messaging.arun(...)`, or make it a def handler that "
                "asks for a Session"
            )
        connection = joined.connection
        assert isinstance(connection, Connection)
        if in_batch(invocation, joined):
            try:
                return await proceed()
            except Exception as error:
                raise BatchRollback(str(error)) from error
        with savepoint(joined):
            return await proceed()
