"""A missing busway table, told as the one sentence that says to set up.

Every driver says it its own way: PostgreSQL's SQLSTATE 42P01 (``relation ... does not
exist``), MariaDB/MySQL's error 1146 (``Table ... doesn't exist``), SQLite's ``no such table``.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any, Protocol

from sqlalchemy import event
from sqlalchemy.engine import Engine, ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine

from busway.errors import SetupRequired

_UNDEFINED_TABLE = "42P01"
_NO_SUCH_TABLE = 1146


class Tables(Protocol):
    @property
    def tables(self) -> Collection[str]: ...

    @property
    def described(self) -> str: ...


def missing_table(error: BaseException, tables: Collection[str]) -> str | None:
    """Which of ``tables`` the driver's ``error`` says does not exist, if any."""
    text = str(error)
    args: tuple[Any, ...] = getattr(error, "args", ())
    if not (
        getattr(error, "sqlstate", None) == _UNDEFINED_TABLE
        or (bool(args) and args[0] == _NO_SUCH_TABLE)
        or "no such table" in text
    ):
        return None
    for table in tables:
        if re.search(rf"(?<![\w$]){re.escape(table)}(?![\w$])", text):
            return table
    return None


def watch_for_missing_tables(engine: Engine | AsyncEngine, database: Tables) -> None:
    """Raise ``SetupRequired`` instead of the driver's error on a missing busway table."""
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine

    @event.listens_for(sync_engine, "handle_error")
    def on_error(context: ExceptionContext) -> None:
        if _looking(context):
            return  # finding out whether a table exists: the error is the answer
        table = missing_table(context.original_exception, database.tables)
        if table is not None:
            raise SetupRequired(f"table {table}", database.described) from None


LOOKING = "busway_looking_for_tables"
"""The execution option of connections that look for tables, whose errors say "not there"."""


def _looking(context: ExceptionContext) -> bool:
    connection = context.connection
    if connection is not None and connection.get_execution_options().get(LOOKING):
        return True
    return (context.statement or "").lstrip().upper().startswith("DESCRIBE")
