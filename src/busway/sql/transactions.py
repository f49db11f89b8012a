"""Transactions around handlers, and the open transaction that SQL channels join.

The open transaction lives in a context variable. A ``SqlChannel`` of the same database
writes its rows through it, so an outbox message commits or rolls back with the business
writes around it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, NestedTransaction, event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, AsyncTransaction
from sqlalchemy.orm import Session

from busway.channels.base import BatchRollback
from busway.interceptors import HandlerInfo, Invocation
from busway.sql.database import DatabaseKey

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
    held_keys: set[tuple[str, str]] = field(default_factory=set)
    """The (channel, ordering key) pairs this transaction holds back: a message of the key
    was sent again to keep its place, or dead-lettered (``busway.sql.runs``)."""

    @property
    def is_async(self) -> bool:
        return isinstance(self.connection, AsyncConnection)


@dataclass(eq=False, slots=True)
class Savepoint:
    """A savepoint around one handler, begun on its first write (``scopes.begin_writes``)."""

    nested: NestedTransaction | AsyncTransaction | None = None


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


def run_after_commit(transaction: Transaction) -> None:
    for callback in transaction.after_commit:
        callback()


_AFTER_COMMIT = "busway_after_commit"


def after_its_commit(session: Session | AsyncSession) -> list[Callable[[], None]]:
    """The after-commit callbacks of transactions joined to ``session``: run, then forgotten,
    each time its owner commits it, inside a ``transaction(session)`` block or after it. One
    listener per session, however many blocks join it."""
    session = session.sync_session if isinstance(session, AsyncSession) else session
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
