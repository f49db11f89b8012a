"""A SQLAlchemy Engine whose connections are Django's: the calling thread's connection of one
database alias, its transactions Django's ``atomic()`` blocks.

SQLAlchemy's pool hands out a ``DjangoConnection``, a stand-in for the driver's connection
that Django holds. When busway begins a transaction on it, a ``transaction.atomic()`` block
opens: the outermost one begins Django's transaction, one inside an open block makes a
savepoint, so a message sent inside a view's ``atomic()`` is written in that transaction and a
worker's claim, its handlers' ORM writes and its acknowledgement are one transaction. busway's
commit and rollback end that block; closing the connection leaves Django's connection open.
A connection asked for ``AUTOCOMMIT``, or one of busway's reads, opens no block: outside
``atomic()`` its statements commit at once, as Django's own do; inside the application's block
they are part of it; inside a block busway opened (a worker's batch), ``AUTOCOMMIT`` statements
go to a connection beside Django's (``busway.django.aside``).
"""

from __future__ import annotations

import contextlib
import threading
from types import ModuleType
from typing import Any

from django.db import DatabaseError, connections, transaction
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.pool import NullPool

from busway.channels.base import current_batch
from busway.django import aside
from busway.errors import ConfigurationError

_DIALECTS = {
    "psycopg": "postgresql+psycopg",
    "psycopg2": "postgresql+psycopg2",
    "MySQLdb": "mysql+mysqldb",
    "pymysql": "mysql+pymysql",
    "sqlite3": "sqlite+pysqlite",
}
_OWN = frozenset(
    {"_alias", "_wrapper", "_raw", "_atomic", "_joined", "_driver", "_aside", "_broken"}
)


_connecting = threading.local()


def busway_is_connecting() -> bool:
    """Whether busway itself is opening the thread's Django connection (its own set-up at
    first use comes before that, outside any ``atomic()`` block)."""
    return bool(getattr(_connecting, "busway", False))


class _RolledBack(Exception):
    """Ends a Django ``atomic()`` block the way an error does: rolled back."""


class DjangoConnection:
    """What SQLAlchemy's pool hands out: the thread's Django connection of ``alias``.

    Statements go to the driver's connection Django holds. The settings of that connection
    (autocommit, isolation level) are Django's: SQLAlchemy's changes to them are ignored.
    """

    __slots__ = tuple(sorted(_OWN))

    def __init__(self, alias: str) -> None:
        wrapper = connections[alias]
        if wrapper.connection is None:
            _connecting.busway = True
            try:
                wrapper.ensure_connection()
            finally:
                _connecting.busway = False
        set_ = object.__setattr__
        set_(self, "_alias", alias)
        set_(self, "_wrapper", wrapper)
        set_(self, "_raw", wrapper.connection)
        set_(self, "_driver", wrapper.Database)
        set_(self, "_atomic", None)
        set_(self, "_joined", None)
        set_(self, "_aside", False)
        set_(self, "_broken", False)

    # -- the transaction: a Django atomic() block -------------------------------------------

    def begin(self) -> None:
        """Open an ``atomic()`` block: Django's transaction, or a savepoint inside one."""
        set_ = object.__setattr__
        set_(self, "_joined", self._wrapper.in_atomic_block)
        block = transaction.atomic(using=self._alias)
        try:
            block.__enter__()
        except DatabaseError:
            if self._joined or self._wrapper.is_usable():
                raise
            self._reconnect()  # broken since its last use (MariaDB's wait_timeout, a restart)
            block = transaction.atomic(using=self._alias)
            block.__enter__()
        set_(self, "_atomic", block)
        if not self._joined:
            aside.opened_by_busway(self._alias, True)

    def _reconnect(self) -> None:
        """A new Django connection in place of a broken one nothing was done on yet."""
        with contextlib.suppress(DatabaseError):
            self._wrapper.close()
        _connecting.busway = True
        try:
            self._wrapper.ensure_connection()
        finally:
            _connecting.busway = False
        object.__setattr__(self, "_raw", self._wrapper.connection)

    def savepoint_undone(self) -> None:
        self._wrapper.needs_rollback = False

    def commit(self) -> None:
        block = self._end()
        if block is None:
            return  # an AUTOCOMMIT connection, or one without a transaction
        try:
            block.__exit__(None, None, None)
        except DatabaseError as error:
            cause = error.__cause__
            if isinstance(cause, self._driver.Error):
                raise cause from None  # the driver's own error: SQLAlchemy knows it
            raise

    def rollback(self) -> None:
        block = self._end()
        if block is not None:
            block.__exit__(_RolledBack, _RolledBack(), None)

    def close(self) -> None:
        """The pool is done with it: a block still open is rolled back; Django's connection
        stays open, Django's to close."""
        self.rollback()
        object.__setattr__(self, "_joined", None)
        if self._broken:
            self._drop_broken()

    def _end(self) -> Any:
        block = self._atomic
        if block is not None and not self._joined:
            aside.opened_by_busway(self._alias, False)
        object.__setattr__(self, "_atomic", None)
        object.__setattr__(self, "_joined", None)
        return block

    # -- the driver's connection ------------------------------------------------------------

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        return self._raw.cursor(*args, **kwargs)

    def add_notice_handler(self, handler: Any) -> None:
        """SQLAlchemy's psycopg dialect adds one at every checkout; Django's connection
        needs none of them."""

    def __getattr__(self, name: str) -> Any:
        if name in _OWN:
            raise AttributeError(name)  # not set yet
        return getattr(self._raw, name)

    def __setattr__(self, name: str, value: Any) -> None:
        """Django owns the connection's settings: SQLAlchemy's ``autocommit``,
        ``isolation_level``, ``read_only`` are not applied (but to a connection beside)."""
        if self._aside:
            setattr(self._raw, name, value)

    # -- a connection beside Django's -------------------------------------------------------

    def autocommit_requested(self) -> None:
        """SQLAlchemy asks for ``AUTOCOMMIT``: inside a block busway opened (a worker's batch),
        what follows must commit outside it, so it goes to a connection beside Django's.
        Elsewhere Django's connection serves: outside ``atomic()`` it commits at once, inside
        the application's block it joins it."""
        if aside.in_busway_block(self._alias):
            object.__setattr__(self, "_raw", aside.connection_beside(self._wrapper))
            object.__setattr__(self, "_aside", True)

    @property
    def is_aside(self) -> bool:
        return bool(self._aside)

    def invalidated(self) -> None:
        """SQLAlchemy found the connection broken (a server restart, a killed session): the
        next one must be new. SQLAlchemy closes this one next (``close``)."""
        object.__setattr__(self, "_broken", True)
        if self._aside:
            aside.forget(self._alias)

    def _drop_broken(self) -> None:
        """Close Django's broken connection once no block holds it (the rollback of a block
        that held it was this connection's last use): Django's next use opens a new one."""
        if not self._aside and not self._wrapper.in_atomic_block:
            with contextlib.suppress(DatabaseError):
                self._wrapper.close()

    # -- the refusal ------------------------------------------------------------------------

    def check_sent_in_transaction(self) -> None:
        """Refuse a message written on its own while an ``atomic()`` block is open on another
        database alias: it would commit at once, whatever that block does."""
        joined = self._joined
        if joined is None:
            joined = self._wrapper.in_atomic_block
        if joined or current_batch.get() is not None:
            return
        for wrapper in connections.all(initialized_only=True):
            if wrapper.alias != self._alias and wrapper.in_atomic_block:
                raise ConfigurationError(_refusal(self._alias, wrapper.alias))


class _MySQLConnection(DjangoConnection):
    __slots__ = ()

    def character_set_name(self) -> None:
        """None, so that SQLAlchemy sends no ``SET NAMES`` at each checkout: Django set the
        connection's character set when it connected."""
        return None

    def autocommit(self, value: bool) -> None:
        """MySQLdb's and PyMySQL's way to set autocommit: Django's to decide."""
        if self._aside:
            self._raw.autocommit(value)


def _refusal(alias: str, other: str) -> str:
    return (
        f"a message was sent inside transaction.atomic(using={other!r}), but busway writes to "
        f"the database {alias!r} (settings.BUSWAY['DATABASE']), so it would commit at once on "
        f"its own; set BUSWAY['DATABASE'] = {other!r}, or send it inside "
        f"transaction.atomic(using={alias!r})"
    )


def dialect_of(driver: ModuleType) -> str:
    """The SQLAlchemy dialect of the driver a Django backend uses."""
    name = driver.__name__.split(".")[0]  # sqlite3.dbapi2: sqlite3
    if name not in _DIALECTS:
        raise ConfigurationError(
            f"busway.django cannot use a Django database whose driver is {name}; use "
            "PostgreSQL (psycopg), MariaDB/MySQL (mysqlclient or PyMySQL) or SQLite"
        )
    return _DIALECTS[name]


def django_engine(alias: str, tables: frozenset[str] | set[str]) -> Engine:
    """An Engine on the Django connection of ``alias``; ``tables``: busway's channel tables,
    whose INSERTs are refused outside the transaction the application is in."""
    wrapper = connections[alias]
    driver = wrapper.Database
    dialect = dialect_of(driver)
    kind = _MySQLConnection if dialect.startswith("mysql") else DjangoConnection
    options: dict[str, Any] = {}
    if dialect.startswith("postgresql"):
        options["use_native_hstore"] = False  # no type lookup at the first connection
    engine = create_engine(
        f"{dialect}://",
        creator=lambda: kind(alias),
        poolclass=NullPool,
        pool_reset_on_return=None,
        **options,
    )
    _isolation_left_to_django(engine)
    event.listen(engine, "begin", _begin)
    event.listen(engine, "rollback_savepoint", _rolled_back_to_savepoint)
    event.listen(engine, "set_connection_execution_options", _options_set)
    event.listen(engine, "invalidate", _invalidated)
    event.listen(engine, "before_cursor_execute", _refuse_outside(tables))
    return engine


def _isolation_left_to_django(engine: Engine) -> None:
    """SQLAlchemy sets a connection's isolation level for ``AUTOCOMMIT`` and back: on
    MariaDB/MySQL with SQL ending in ``COMMIT``, which would commit the transaction Django has
    open. On Django's connection the level stays Django's; on a connection beside it
    (``autocommit_requested``) SQLAlchemy sets it."""
    dialect = engine.dialect
    apply = dialect.set_isolation_level

    def set_isolation_level(dbapi_connection: Any, level: Any) -> None:
        if not isinstance(dbapi_connection, DjangoConnection) or dbapi_connection.is_aside:
            apply(dbapi_connection, level)

    setattr(dialect, "set_isolation_level", set_isolation_level)  # noqa: B010 - this engine's


_READ_ONLY = "busway_read_only"
"""The execution option of ``Database.reading()``'s connections (busway.sql.database)."""


def _begin(connection: Connection) -> None:
    options = connection.get_execution_options()
    if options.get("isolation_level") == "AUTOCOMMIT" or options.get(_READ_ONLY):
        return  # its statements commit on their own (reads: no lock), or join the open block
    _django(connection).begin()


def _options_set(connection: Connection, options: dict[str, Any]) -> None:
    if options.get("isolation_level") == "AUTOCOMMIT":
        _django(connection).autocommit_requested()


def _invalidated(dbapi_connection: Any, *_: Any) -> None:
    if isinstance(dbapi_connection, DjangoConnection):
        dbapi_connection.invalidated()


def _rolled_back_to_savepoint(connection: Connection, *_: Any) -> None:
    """A handler's savepoint undone: what failed in it no longer dooms the transaction.

    Django's ORM marks the whole ``atomic()`` block for rollback when a query fails inside
    it (``needs_rollback``); rolled back to busway's savepoint, the transaction is sound
    again, as after Django's own savepoint rollback."""
    _django(connection).savepoint_undone()


def _django(connection: Connection) -> DjangoConnection:
    found = connection.connection.dbapi_connection
    assert isinstance(found, DjangoConnection)
    return found


def _refuse_outside(tables: frozenset[str] | set[str]) -> Any:
    def refuse(connection: Connection, _cursor: Any, statement: str, *_: Any) -> None:
        if statement[:12].upper() != "INSERT INTO ":
            return
        table = statement[12:].lstrip().split(" ", 1)[0].strip('"`')
        if table in tables:
            _django(connection).check_sent_in_transaction()

    return refuse
