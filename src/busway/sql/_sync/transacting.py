# Generated from src/busway/sql/_async/transacting.py by tools/unasync.py: do not edit.
# Change the asyncio source, then run `make generate`.
"""A handler in a database transaction (``TransactionInterceptor``): joining the one open,
under a savepoint that its first write begins (none in a channel's batch), or opening one of
its own; and the Session and Connection it is given."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from busway.channels.base import BatchRollback
from busway.interceptors import Invocation
from busway.sql._sync.scopes import begin_writes, savepoint
from busway.sql.abandoned import freed_if_abandoned, raise_if_abandoned
from busway.sql.database import Database
from busway.sql.transactions import Transaction, current_transaction, in_batch, run_after_commit


def run_in_transaction(
    database: Database,
    joined: Transaction | None,
    invocation: Invocation,
    proceed: Callable[[], Any],
    *,
    opens: bool,
    eager: bool,
) -> Any:
    """Run the handler in ``joined``, the transaction open on ``database``; with none, in one
    of its own if it ``opens`` one, else outside any. ``eager``: begin its savepoint at once."""
    if joined is not None:
        if in_batch(invocation, joined):
            try:
                return _call(joined, invocation, proceed, eager)
            except Exception as error:
                raise BatchRollback(str(error)) from error
        with savepoint(joined):
            return _call(joined, invocation, proceed, eager)
    if not opens:
        return proceed()
    with (
        database.engine.connect() as connection,
        freed_if_abandoned(connection),
        connection.begin(),
    ):
        transaction = Transaction(database.key, connection)
        token = current_transaction.set(transaction)
        try:
            result = _call(transaction, invocation, proceed, eager)
            raise_if_abandoned()  # past its time limit, and retried: commit nothing
        finally:
            current_transaction.reset(token)
    run_after_commit(transaction)
    return result


def _call(
    transaction: Transaction,
    invocation: Invocation,
    proceed: Callable[[], Any],
    eager: bool,
) -> Any:
    connection = transaction.connection
    assert isinstance(connection, Connection)
    sessions: list[Session] = []

    def session() -> Session:
        # Made at the handler's first use; a handler that asks for one is ``eager``.
        if not sessions:
            sessions.append(Session(bind=connection, join_transaction_mode="rollback_only"))
        return sessions[0]

    if eager:
        begin_writes(transaction)
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
