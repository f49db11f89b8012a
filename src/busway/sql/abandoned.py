"""Ending, from another thread, the database session of a handler abandoned past its limit.

The handler's thread may be blocked inside a statement on that connection (waiting for a
row lock, say): closing the connection on the client side alone would leave the server
session, its transaction and its locks in place until that statement ends. So the server
session is ended first (``pg_terminate_backend``, ``KILL``; on SQLite the running statement
is interrupted), then the connection is invalidated: nothing of its transaction can commit.

On the asyncio path nothing is abandoned: an ``async def`` handler is cancelled at its limit
(``busway._internal.time_limits``). The asyncio names here, which the generated code's source
calls, do nothing.
"""

from __future__ import annotations

import contextlib
import functools
import time
from contextlib import AbstractAsyncContextManager, AbstractContextManager

from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncConnection

from busway._internal.time_limits import raise_if_abandoned as raise_if_abandoned
from busway._internal.time_limits import released_if_abandoned

GONE_WITHIN = 5.0
"""How long to wait for the server to end the session, in seconds."""


def freed_if_abandoned(connection: Connection) -> AbstractContextManager[None]:
    """Around a handler's use of ``connection``: if the worker abandons the handler, its
    session is ended, then the connection invalidated."""
    return released_if_abandoned(functools.partial(end_session, connection), connection.invalidate)


def afreed_if_abandoned(connection: AsyncConnection) -> AbstractAsyncContextManager[None]:
    """``freed_if_abandoned`` on the asyncio path: nothing to free."""
    return contextlib.nullcontext()


def araise_if_abandoned() -> None:
    """``raise_if_abandoned`` on the asyncio path: nothing to raise."""


def end_session(connection: Connection) -> None:
    """Stop the statement running on ``connection`` and, on a server, roll back its
    transaction and release its locks now, from any thread. (SQLite's transaction ends when
    the connection is closed.)"""
    if connection.invalidated or connection.closed:
        return
    backend = connection.dialect.name
    driver_connection = connection.connection.driver_connection
    if backend == "sqlite":
        driver_connection.interrupt()  # type: ignore[union-attr]
    elif backend == "postgresql":
        pid = _postgresql_pid(driver_connection)
        with connection.engine.connect() as other:
            other.execute(
                text("SELECT pg_terminate_backend(:pid, :wait)"),
                {"pid": pid, "wait": int(GONE_WITHIN * 1000)},
            )
    elif backend in ("mysql", "mariadb"):
        thread_id = int(driver_connection.thread_id())  # type: ignore[union-attr]
        with connection.engine.connect() as other:
            other.exec_driver_sql(f"KILL {thread_id}")
            _wait_gone(other, thread_id)


def _postgresql_pid(driver_connection: object) -> int:
    info = getattr(driver_connection, "info", None)  # psycopg 3
    pid = getattr(info, "backend_pid", None)
    if pid is None:
        pid = driver_connection.get_backend_pid()  # type: ignore[attr-defined]  # psycopg2
    return int(pid)


def _wait_gone(connection: Connection, thread_id: int) -> None:
    """``KILL`` only marks the session: wait until it has rolled back and gone."""
    query = text("SELECT COUNT(*) FROM information_schema.processlist WHERE id = :id")
    deadline = time.monotonic() + GONE_WITHIN
    while connection.execute(query, {"id": thread_id}).scalar_one() and (
        time.monotonic() < deadline
    ):
        time.sleep(0.01)
