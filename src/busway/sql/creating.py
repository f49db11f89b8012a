"""Creating busway's tables: at most once per process, and safe when processes race.

What exists is found with a read first, so a process that finds everything in place takes no
lock (on SQLite, not the write lock a transaction of the application may hold). Creation runs
under an advisory lock on PostgreSQL; elsewhere a creation that lost a race to another process
("already exists") is tried again, and then finds what the other made.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from sqlalchemy import Connection, Index, Table, inspect, text
from sqlalchemy.exc import DBAPIError

from busway.errors import ConfigurationError
from busway.sql.database import Database
from busway.sql.missing import LOOKING

_LOCK_KEY = 0x62757377  # "busw"
_TRIES = 3
_LOCK = text("SELECT pg_advisory_xact_lock(:key)")
_TRIGGER = text(
    "SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass(:table) AND tgname = :name"
)
_RACE_LOST = ("already exists", "duplicate")


def set_up(
    database: Database,
    ready: Callable[[Connection], bool],
    create: Callable[[Connection], None],
) -> None:
    """Run ``create`` unless ``ready`` finds it done."""
    with database.reading() as connection:
        if ready(connection.execution_options(**{LOOKING: True})):
            return
    for attempt in range(1, _TRIES + 1):
        try:
            with database.engine.connect() as connection, connection.begin():
                connection.execution_options(**{LOOKING: True})
                if database.backend == "postgresql":
                    connection.execute(_LOCK, {"key": _LOCK_KEY})
                create(connection)
            return
        except DBAPIError as error:
            if attempt == _TRIES or not _race_lost(error):
                raise


def has_table(table: Table) -> Callable[[Connection], bool]:
    return lambda connection: inspect(connection).has_table(table.name)


def create_table(table: Table) -> Callable[[Connection], None]:
    return lambda connection: table.create(connection, checkfirst=True)


def has_trigger(connection: Connection, table: str, trigger: str) -> bool:
    """Whether PostgreSQL table ``table`` has trigger ``trigger``."""
    found = connection.execute(
        _TRIGGER,
        {"table": table, "name": trigger},
    ).scalar()
    return bool(found)


def _race_lost(error: DBAPIError) -> bool:
    described = str(error.orig).lower()
    return any(sign in described for sign in _RACE_LOST)


def check_columns(
    connection: Connection, table: Table, then: Mapping[str, str] | None = None
) -> None:
    """Raise if ``table``, made by an earlier version, lacks columns this one writes: say
    which, and the statements that add them (``then``: a statement to run after adding a
    column, by its name, ``{table}`` in it the table's name)."""
    found = {column["name"] for column in inspect(connection).get_columns(table.name)}
    missing = [column for column in table.columns if column.name not in found]
    if not missing:
        return
    dialect = connection.dialect
    additions = []
    for column in missing:
        kind = column.type.compile(dialect=dialect)
        rest = "" if column.nullable else " NOT NULL DEFAULT 0"
        additions.append(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}{rest}")
    for column in missing:
        if then and column.name in then:
            additions.append(then[column.name].format(table=table.name))
    raise ConfigurationError(
        f"table {table.name} lacks the column(s) "
        f"{', '.join(column.name for column in missing)} that this version of busway "
        "writes (busway setup then makes the indexes that go with them); add them with: "
        f"{'; '.join(additions)}"
    )


def missing_indexes(connection: Connection, table: Table) -> list[Index]:
    """The indexes of ``table`` that its database does not have yet."""
    found = {index["name"] for index in inspect(connection).get_indexes(table.name)}
    return [index for index in table.indexes if index.name not in found]
