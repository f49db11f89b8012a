"""One database, reached through a sync Engine and, for asyncio code, an AsyncEngine."""

from __future__ import annotations

import os
import random
import sqlite3
import time
import weakref
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from busway.errors import ConfigurationError, MissingExtraError
from busway.sql.missing import watch_for_missing_tables

E = TypeVar("E", Engine, AsyncEngine)

# The driver busway picks when a URL names only the database kind.
_SYNC_DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
    "sqlite": "sqlite+pysqlite",
}
# asyncmy, not aiomysql: aiomysql fails on every bytes parameter with PyMySQL >= 1.2.
_ASYNC_DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "mysql": "mysql+asyncmy",
    "mariadb": "mariadb+asyncmy",
    "sqlite": "sqlite+aiosqlite",
}
_EXTRAS = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql", "sqlite": "sqlite"}


@dataclass(frozen=True, slots=True)
class DatabaseKey:
    """Identifies a database whatever the driver: two engines with one key share rows."""

    backend: str
    host: str | None
    port: int | None
    database: str | None

    @classmethod
    def of(cls, url: URL) -> DatabaseKey:
        backend = url.get_backend_name()
        if backend == "mariadb":
            backend = "mysql"
        return cls(backend, url.host, url.port, url.database)


class Database:
    """The engines of one database; made from a URL, an Engine or an AsyncEngine."""

    def __init__(self, engine: Engine | None, async_engine: AsyncEngine | None, url: URL) -> None:
        self._engine = engine
        self._async_engine = async_engine
        self.url = url
        self.key = DatabaseKey.of(url)
        self.backend = self.key.backend
        self._owned = engine is None or async_engine is None
        self._from_url = engine is None and async_engine is None
        self._worker_engine: Engine | None = None
        self._worker_async_engine: AsyncEngine | None = None
        self.tables: set[str] = set()
        """busway's tables in this database: an error naming one that is missing says to
        set up, instead of showing the driver's error."""
        if engine is not None:
            self._watch(engine)
        if async_engine is not None:
            self._watch(async_engine)

    @classmethod
    def of(cls, database: Any) -> Database:
        if isinstance(database, Database):
            return database
        if isinstance(database, Engine):
            _prepare_sqlite(database)
            return cls(database, None, database.url)
        if isinstance(database, AsyncEngine):
            _prepare_sqlite(database.sync_engine)
            return cls(None, database, database.url)
        if isinstance(database, str | URL):
            url = make_url(database)
            return cls(None, None, url)
        raise ConfigurationError(
            f"database={database!r} is not a database URL, an Engine or an AsyncEngine; "
            'pass e.g. database="sqlite:///app.db" or "postgresql://user@host/db"'
        )

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = self._made_engine(pre_ping=True)
        return self._engine

    @property
    def async_engine(self) -> AsyncEngine:
        if self._async_engine is None:
            self._async_engine = self._made_async_engine(pre_ping=True)
        return self._async_engine

    def reading(self) -> Connection:
        """A connection for reads only (``with database.reading() as connection:``).

        On SQLite its transactions begin DEFERRED, so reading never waits for a worker's
        write lock; elsewhere it is a plain connection.
        """
        return self.engine.connect().execution_options(**{_READ_ONLY: True})

    def autocommit(self) -> AbstractContextManager[Connection]:
        """A connection for one statement that commits by itself: on PostgreSQL, without
        the round trips of BEGIN and COMMIT."""
        if self.backend == "postgresql":
            return self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        return self.engine.begin()

    def aautocommit(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """``autocommit`` for asyncio code: a transaction of its own, committed on leaving."""
        return self.async_engine.begin()

    @property
    def worker_engine(self) -> Engine:
        """The engine workers claim messages with.

        Made from a URL on a database server, it skips the ping that ``engine`` sends at every
        checkout to find connections a server restart broke: a worker claims often and
        retries a claim that failed on such a connection (``DBAPIError.connection_invalidated``).
        """
        if not self._from_url or self.backend == "sqlite":
            return self.engine
        if self._worker_engine is None:
            self._worker_engine = self._made_engine(pre_ping=False)
        return self._worker_engine

    @property
    def worker_async_engine(self) -> AsyncEngine:
        """``worker_engine`` for asyncio workers."""
        if not self._from_url or self.backend == "sqlite":
            return self.async_engine
        if self._worker_async_engine is None:
            self._worker_async_engine = self._made_async_engine(pre_ping=False)
        return self._worker_async_engine

    def _made_engine(self, *, pre_ping: bool) -> Engine:
        engine = _create(
            _with_driver(self.url, _SYNC_DRIVERS), asynchronous=False, pre_ping=pre_ping
        )
        assert isinstance(engine, Engine)
        return self._watch(engine)

    def _made_async_engine(self, *, pre_ping: bool) -> AsyncEngine:
        url = _with_driver(self.url, _ASYNC_DRIVERS)
        engine = _create(url, asynchronous=True, pre_ping=pre_ping)
        assert isinstance(engine, AsyncEngine)
        return self._watch(engine)

    def _watch(self, engine: E) -> E:
        watch_for_missing_tables(engine, self)
        return engine

    @property
    def is_sqlite(self) -> bool:
        return self.backend == "sqlite"

    def dispose(self) -> None:
        for engine in (self._engine, self._worker_engine):
            if engine is not None:
                engine.dispose()

    async def adispose(self) -> None:
        """Close the AsyncEngine's pooled connections; call it on the loop that made them."""
        for engine in (self._async_engine, self._worker_async_engine):
            if engine is not None:
                await engine.dispose()
        self.dispose()

    @property
    def described(self) -> str:
        return f"database {self.url.render_as_string(hide_password=True)}"

    def __repr__(self) -> str:
        return f"Database({self.url.render_as_string(hide_password=True)!r})"


def _with_driver(url: URL, drivers: dict[str, str]) -> URL:
    backend = url.get_backend_name()
    if url.drivername == backend and backend in drivers:
        return url.set(drivername=drivers[backend])
    return url


def _create(url: URL, *, asynchronous: bool, pre_ping: bool = True) -> Engine | AsyncEngine:
    backend = url.get_backend_name()
    options: dict[str, Any] = {}
    if backend == "sqlite":
        options["connect_args"] = {"timeout": 30}
    else:
        options["pool_pre_ping"] = pre_ping
    try:
        if asynchronous:
            async_engine = create_async_engine(url, **options)
            _prepare_sqlite(async_engine.sync_engine)
            return async_engine
        engine = create_engine(url, **options)
    except ModuleNotFoundError as error:
        raise MissingExtraError(
            f"the {url.drivername} database driver ({error.name})", _EXTRAS.get(backend, backend)
        ) from error
    _prepare_sqlite(engine)
    return engine


_prepared: weakref.WeakSet[Engine] = weakref.WeakSet()
_READ_ONLY = "busway_read_only"


def _prepare_sqlite(engine: Engine) -> None:
    """Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.

    sqlite3 delays BEGIN until the first write and breaks SAVEPOINT; busway needs a
    transaction from the first statement (a claim must be atomic) and savepoints (one
    handler's failure must not undo another's work). Transactions begin IMMEDIATE so a
    writer takes the write lock up front instead of failing to upgrade a read lock later.
    """
    if engine.dialect.name != "sqlite" or engine in _prepared:
        return
    _prepared.add(engine)

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection: Any) -> None:
        if connection.get_execution_options().get(_READ_ONLY):
            connection.exec_driver_sql("BEGIN DEFERRED")  # reads wait for no write lock
        elif connection.dialect.is_async:
            connection.exec_driver_sql("BEGIN IMMEDIATE")  # waits in the driver's thread
        else:
            _begin_immediate(connection.connection.dbapi_connection)


_LOCK_TIMEOUT = 30.0
_LOCK_POLL = 0.0005


def _begin_immediate(dbapi_connection: Any) -> None:
    """BEGIN IMMEDIATE, trying for the write lock every half millisecond.

    SQLite's own busy handler backs off to 100 ms between tries, so a worker that commits a
    batch and at once begins the next keeps the lock for ever: a second worker process never
    gets a turn. Trying often, waiting workers get their share.
    """
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA busy_timeout=0")
        deadline = time.monotonic() + _LOCK_TIMEOUT
        while True:
            try:
                cursor.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
            time.sleep(_LOCK_POLL * random.uniform(0.5, 1.5))
    finally:
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()


def refuse_other_database(database: Database, url: URL) -> None:
    """Raise unless ``url`` (a joined session's) names ``database``'s database: the outbox
    rows would otherwise be written, and committed, in another database.

    Hosts are not compared (``localhost`` and ``127.0.0.1`` are one server); the kind of
    database and its name are.
    """
    theirs = DatabaseKey.of(url)
    ours = database.key
    if theirs.backend == ours.backend and (
        theirs.database is None
        or ours.database is None
        or _database_name(theirs) == _database_name(ours)
    ):
        return
    raise ConfigurationError(
        f"messaging.transaction(session): the session is bound to "
        f"{url.render_as_string(hide_password=True)}, not to the messaging database "
        f"{database.url.render_as_string(hide_password=True)}, so the messages sent inside "
        "would be written there; bind the session to messaging.database_engine (or "
        "async_database_engine), or give Messaging(database=...) that database"
    )


def _database_name(key: DatabaseKey) -> str | None:
    if key.backend == "sqlite" and key.database not in (None, "", ":memory:"):
        return os.path.realpath(str(key.database))
    return key.database
