"""Transactions around handlers, and the open transaction that SQL channels join.

The open transaction lives in a context variable. A ``SqlChannel`` of the same database
writes its rows through it, so an outbox message commits or rolls back with the business
writes around it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, NestedTransaction, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, AsyncTransaction
from sqlalchemy.orm import Session

from busway._internal.time_limits import raise_if_abandoned
from busway.channels.base import BatchRollback
from busway.handlers import Kind
from busway.interceptors import HandlerInfo, Interceptor, Invocation
from busway.sql.abandoned import freed_if_abandoned
from busway.sql.database import Database, DatabaseKey

DB_TYPES = (Session, Connection, AsyncSession, AsyncConnection)


@dataclass(eq=False)
class Transaction:
    """An open transaction on one database, sync or asyncio."""

    key: DatabaseKey
    connection: Connection | AsyncConnection
    session: Session | AsyncSession | None = None
    after_commit: list[Callable[[], None]] = field(default_factory=list)
    before_commit: list[Callable[[], Any]] = field(default_factory=list)
    """Run by a SQL channel just before it acknowledges a batch; may return an awaitable."""
    pending: dict[object, list[dict[str, Any]]] = field(default_factory=dict)
    savepoints: list[Savepoint] = field(default_factory=list)
    """Savepoints promised to the handlers running in this transaction, outermost first."""

    @property
    def is_async(self) -> bool:
        return isinstance(self.connection, AsyncConnection)

    def begin_writes(self) -> None:
        """Begin the savepoints promised and not begun yet: call before writing through
        ``connection``. A handler that never writes costs no savepoint."""
        for savepoint in self.savepoints:
            if savepoint.nested is None:
                assert isinstance(self.connection, Connection)
                savepoint.nested = self.connection.begin_nested()

    async def abegin_writes(self) -> None:
        for savepoint in self.savepoints:
            if savepoint.nested is None:
                assert isinstance(self.connection, AsyncConnection)
                savepoint.nested = await self.connection.begin_nested()

    def sync_session(self) -> Session:
        if self.session is None:
            assert isinstance(self.connection, Connection)
            self.session = Session(bind=self.connection, join_transaction_mode="rollback_only")
        assert isinstance(self.session, Session)
        return self.session

    def async_session(self) -> AsyncSession:
        if self.session is None:
            assert isinstance(self.connection, AsyncConnection)
            self.session = AsyncSession(bind=self.connection, join_transaction_mode="rollback_only")
        assert isinstance(self.session, AsyncSession)
        return self.session


@dataclass(eq=False, slots=True)
class Savepoint:
    """A savepoint around one handler, begun on its first write (``begin_writes``)."""

    nested: NestedTransaction | AsyncTransaction | None = None


class savepoint:
    """Undo what the block writes through ``transaction`` if it raises, and only that.

    The savepoint is promised on entry and begun by the first write (``begin_writes``).
    """

    __slots__ = ("promised", "transaction")

    def __init__(self, transaction: Transaction) -> None:
        self.transaction = transaction
        self.promised = Savepoint()

    def __enter__(self) -> None:
        self.transaction.savepoints.append(self.promised)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: object
    ) -> None:
        self.transaction.savepoints.remove(self.promised)
        nested = self.promised.nested
        if self.transaction.connection.invalidated:
            raise lost(error, None)  # its savepoint went with the connection
        if isinstance(nested, NestedTransaction):
            try:
                if kind is None:
                    nested.commit()
                else:
                    nested.rollback()
            except DBAPIError as ended:
                raise lost(error, ended)  # noqa: B904 - its cause is set
        if self.transaction.connection.invalidated:
            raise lost(error, None)

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


class TransactionLost(BatchRollback):
    """The database ended the transaction under a handler's savepoint, or dropped its
    connection: a deadlock victim on MariaDB, an interrupted statement on SQLite, a killed
    connection. What every handler before it wrote is gone too, so nothing of the batch may
    be acknowledged in it: the channel redoes the batch in a new transaction, this handler's
    error (the ``__cause__``) counted as its failure."""

    def __init__(self, cause: BaseException | str) -> None:
        super().__init__(
            f"the database ended the transaction under a handler's savepoint ({cause}): "
            "all that was written in it is undone, so it must be redone whole in a new one"
        )


def lost(error: BaseException | None, ended: BaseException | None) -> TransactionLost:
    """What to raise when a savepoint finds its transaction gone after the handler's
    ``error`` (None if it succeeded): ``ended`` is why the savepoint could not end."""
    if isinstance(error, TransactionLost):
        return error  # a nested handler's savepoint found it first
    cause = error or ended
    found = TransactionLost(cause or "the connection was dropped")
    found.__cause__ = cause
    return found


current_transaction: ContextVar[Transaction | None] = ContextVar("busway_transaction", default=None)


def open_transaction(key: DatabaseKey, asynchronous: bool) -> Transaction | None:
    """The open transaction on database ``key`` usable from sync or asyncio code."""
    transaction = current_transaction.get()
    if (
        transaction is not None
        and (transaction.key is key or transaction.key == key)
        and transaction.is_async == asynchronous
    ):
        return transaction
    return None


def _run_after_commit(transaction: Transaction) -> None:
    for callback in transaction.after_commit:
        callback()


_AFTER_COMMIT = "busway_after_commit"


def _after_its_commit(session: Session) -> list[Callable[[], None]]:
    """The after-commit callbacks of transactions joined to ``session``: run, then forgotten,
    each time its owner commits it, inside a ``transaction(session)`` block or after it. One
    listener per session, however many blocks join it."""
    callbacks: list[Callable[[], None]] | None = session.info.get(_AFTER_COMMIT)
    if callbacks is None:
        callbacks = session.info[_AFTER_COMMIT] = []
        event.listen(session, "after_commit", _run_after_its_commit)
    return callbacks


def _run_after_its_commit(session: Session) -> None:
    callbacks: list[Callable[[], None]] = session.info[_AFTER_COMMIT]
    due, callbacks[:] = list(callbacks), []
    for callback in due:
        callback()


@contextmanager
def transaction_scope(database: Database, session: Session | None = None) -> Iterator[Session]:
    """Join ``session``'s transaction, or open one (committed on success) if none is given."""
    if session is not None:
        transaction = Transaction(
            database.key, session.connection(), session, after_commit=_after_its_commit(session)
        )
        token = current_transaction.set(transaction)
        try:
            yield session
        finally:
            current_transaction.reset(token)
        return
    with database.engine.connect() as connection, connection.begin():
        transaction = Transaction(database.key, connection)
        token = current_transaction.set(transaction)
        try:
            yield transaction.sync_session()
            transaction.sync_session().flush()
        finally:
            current_transaction.reset(token)
    _run_after_commit(transaction)


@asynccontextmanager
async def atransaction_scope(
    database: Database, session: AsyncSession | None = None
) -> AsyncIterator[AsyncSession]:
    """``transaction_scope`` for asyncio code and ``AsyncSession``."""
    if session is not None:
        transaction = Transaction(
            database.key,
            await session.connection(),
            session,
            after_commit=_after_its_commit(session.sync_session),
        )
        token = current_transaction.set(transaction)
        try:
            yield session
        finally:
            current_transaction.reset(token)
        return
    async with database.async_engine.connect() as connection, connection.begin():
        transaction = Transaction(database.key, connection)
        token = current_transaction.set(transaction)
        try:
            yield transaction.async_session()
            await transaction.async_session().flush()
        finally:
            current_transaction.reset(token)
    _run_after_commit(transaction)


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
        _run_after_commit(transaction)
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
            async with savepoint(joined):
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
        _run_after_commit(transaction)
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


def in_batch(invocation: Invocation, transaction: Transaction) -> bool:
    """Whether the handler runs in a channel's batch transaction without savepoints."""
    delivery = invocation.delivery
    if delivery is None or delivery.isolated or delivery.transaction is None:
        return False
    claimed = delivery.transaction
    return transaction.connection is claimed or (
        transaction.connection is getattr(claimed, "sync_connection", None)
    )


def blocking(proceed: Callable[[], Awaitable[Any]]) -> Callable[[], Any]:
    def call() -> Any:
        coroutine = proceed()
        try:
            coroutine.send(None)  # type: ignore[attr-defined]
        except StopIteration as done:
            return done.value
        raise RuntimeError("a plain def handler awaited something")  # pragma: no cover

    return call


class DatabaseParameters:
    """Injects the transaction's Session, Connection, AsyncSession or AsyncConnection."""

    def __init__(self) -> None:
        self.wants_database: set[str] = set()
        self.wants_async_database: set[str] = set()

    def resolver_for(
        self, annotation: Any, handler: HandlerInfo
    ) -> Callable[[Invocation], Any] | None:
        if annotation not in DB_TYPES:
            return None
        self.wants_database.add(handler.name)
        if annotation in (AsyncSession, AsyncConnection):
            self.wants_async_database.add(handler.name)
        if annotation in (Session, AsyncSession):
            return lambda invocation: invocation.resources[annotation]()
        return lambda invocation: invocation.resources[annotation]
