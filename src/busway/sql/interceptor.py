"""The interceptor that runs handlers in a database transaction."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Session

from busway._internal.time_limits import raise_if_abandoned
from busway.channels.base import BatchRollback
from busway.handlers import Kind
from busway.interceptors import HandlerInfo, Interceptor, Invocation
from busway.sql._async.scopes import asavepoint
from busway.sql._sync.scopes import savepoint
from busway.sql.abandoned import freed_if_abandoned
from busway.sql.database import Database
from busway.sql.transactions import (
    Transaction,
    blocking,
    current_transaction,
    in_batch,
    open_transaction,
    run_after_commit,
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

    def around(self, invocation: Invocation, proceed: Callable[[], Any]) -> Any:
        joined = open_transaction(self.database.key, asynchronous=False)
        if joined is not None:
            assert isinstance(joined.connection, Connection)
            if in_batch(invocation, joined):
                try:
                    return self._call(invocation, joined, proceed)
                except Exception as error:
                    raise BatchRollback(str(error)) from error
            with savepoint(joined):
                return self._call(invocation, joined, proceed)
        if not self._opens_transaction(invocation.handler):
            return proceed()
        with (
            self.database.engine.connect() as connection,
            freed_if_abandoned(connection),
            connection.begin(),
        ):
            transaction = Transaction(self.database.key, connection)
            token = current_transaction.set(transaction)
            try:
                result = self._call(invocation, transaction, proceed)
                raise_if_abandoned()  # past its time limit, and retried: commit nothing
            finally:
                current_transaction.reset(token)
        run_after_commit(transaction)
        return result

    def _call(
        self, invocation: Invocation, transaction: Transaction, proceed: Callable[[], Any]
    ) -> Any:
        connection = transaction.connection
        assert isinstance(connection, Connection)
        sessions: list[Session] = []

        def session() -> Session:
            if not sessions:
                transaction.begin_writes()
                sessions.append(Session(bind=connection, join_transaction_mode="rollback_only"))
            return sessions[0]

        if self.eager_savepoints or invocation.handler.name in self.wants_database:
            transaction.begin_writes()
        invocation.resources[Connection] = connection
        invocation.resources[Session] = session
        try:
            with freed_if_abandoned(connection):
                result = proceed()
            if sessions:
                sessions[0].flush()
            return result
        finally:
            if sessions:
                sessions[0].close()

    async def aaround(self, invocation: Invocation, proceed: Callable[[], Awaitable[Any]]) -> Any:
        joined = open_transaction(self.database.key, asynchronous=True)
        if not invocation.handler.is_coroutine:
            # A def handler on the asyncio path works with a sync Session: in an open asyncio
            # transaction, through that transaction's own sync connection.
            if joined is None:
                return self.around(invocation, blocking(proceed))
            assert isinstance(joined.connection, AsyncConnection)
            await joined.abegin_writes()  # its writes go through another Transaction object
            return await joined.connection.run_sync(
                lambda connection: self._through(connection, invocation, proceed)
            )
        joined_sync = open_transaction(self.database.key, asynchronous=False)
        if joined is None and joined_sync is not None:
            return await self._in_sync_transaction(invocation, joined_sync, proceed)
        if joined is not None:
            assert isinstance(joined.connection, AsyncConnection)
            if in_batch(invocation, joined):
                try:
                    return await self._acall(invocation, joined, proceed)
                except Exception as error:
                    raise BatchRollback(str(error)) from error
            async with asavepoint(joined):
                return await self._acall(invocation, joined, proceed)
        if not self._opens_transaction(invocation.handler):
            return await proceed()
        async with self.database.async_engine.connect() as connection, connection.begin():
            transaction = Transaction(self.database.key, connection)
            token = current_transaction.set(transaction)
            try:
                result = await self._acall(invocation, transaction, proceed)
            finally:
                current_transaction.reset(token)
        run_after_commit(transaction)
        return result

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

    async def _acall(
        self,
        invocation: Invocation,
        transaction: Transaction,
        proceed: Callable[[], Awaitable[Any]],
    ) -> Any:
        connection = transaction.connection
        assert isinstance(connection, AsyncConnection)
        sessions: list[AsyncSession] = []

        def session() -> AsyncSession:
            if not sessions:
                sessions.append(
                    AsyncSession(bind=connection, join_transaction_mode="rollback_only")
                )
            return sessions[0]

        if self.eager_savepoints or invocation.handler.name in self.wants_database:
            await transaction.abegin_writes()
        invocation.resources[AsyncConnection] = connection
        invocation.resources[AsyncSession] = session
        try:
            result = await proceed()
            if sessions:
                await sessions[0].flush()
            return result
        finally:
            if sessions:
                await sessions[0].close()
