"""Reaching the test databases: URLs, drivers, tables.

The PostgreSQL and MariaDB servers are on loopback by default; override their URLs with
``BUSWAY_TEST_POSTGRESQL_URL`` and ``BUSWAY_TEST_MARIADB_URL``. A test run works in a
database of its own on each server (``busway_test_<pid>``, made at the first test that needs
it and dropped at the end), so runs side by side, or other programs using the configured
database, never see each other's messages.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, MetaData, create_engine, event, text
from sqlalchemy.engine import URL, make_url

SERVERS = {
    "postgresql": os.environ.get(
        "BUSWAY_TEST_POSTGRESQL_URL", "postgresql://postgres@127.0.0.1/test"
    ),
    "mariadb": os.environ.get("BUSWAY_TEST_MARIADB_URL", "mysql://root@127.0.0.1/test"),
}
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306}
BUSWAY_TABLES = (
    "busway_messages",
    "busway_messages_in_hand",
    "busway_dead_letters",
    "busway_inbox",
    "busway_workers",
)

# The driver used for a URL that names only the database kind, as busway picks it.
SYNC_DRIVERS = {"postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql"}
ASYNC_DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "mysql": "mysql+asyncmy",
    "sqlite": "sqlite+aiosqlite",
}


def sync_url(url: str | URL) -> URL:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if parsed.drivername == backend and backend in SYNC_DRIVERS:
        return parsed.set(drivername=SYNC_DRIVERS[backend])
    return parsed


def async_url(url: str | URL) -> URL:
    """The same database through its asyncio driver."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    backend = "mysql" if backend == "mariadb" else backend
    return parsed.set(drivername=ASYNC_DRIVERS[backend])


def _reachable(url: URL) -> str | None:
    """None if the server accepts a TCP connection, else why not."""
    host = url.host or "127.0.0.1"
    port = url.port or DEFAULT_PORTS[url.get_backend_name()]
    try:
        with socket.create_connection((host, port), timeout=2):
            return None
    except OSError as error:
        return f"{host}:{port} is unreachable ({error})"


def require_service(service: str, url: URL) -> None:
    problem = _reachable(url)
    if problem is None:
        return
    message = (
        f"{service} is not running: {problem}. The SQL tests need it; start it or set "
        f"BUSWAY_TEST_{service.upper()}_URL."
    )
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI: {message}", pytrace=False)
    pytest.skip(message)


PRIVATE_PREFIX = "busway_test_"


def _admin_engine(url: URL) -> Engine:
    return create_engine(sync_url(url), isolation_level="AUTOCOMMIT")


def _databases(connection: Connection, backend: str) -> list[str]:
    query = "SELECT datname FROM pg_database" if backend == "postgresql" else "SHOW DATABASES"
    return [row[0] for row in connection.execute(text(query))]


def _drop_database(connection: Connection, backend: str, name: str) -> None:
    force = " WITH (FORCE)" if backend == "postgresql" else ""
    connection.execute(text(f"DROP DATABASE IF EXISTS {name}{force}"))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def create_private_database(url: str | URL) -> URL:
    """A fresh database for this test run on the server of ``url``.

    Databases left by earlier runs that died without cleaning up are dropped on the way.
    """
    parsed = make_url(url)
    name = f"{PRIVATE_PREFIX}{os.getpid()}"
    engine = _admin_engine(parsed)
    try:
        with engine.connect() as connection:
            backend = engine.dialect.name
            for existing in _databases(connection, backend):
                suffix = existing.removeprefix(PRIVATE_PREFIX)
                ours = existing.startswith(PRIVATE_PREFIX) and suffix.isdigit()
                if ours and (existing == name or not _running(int(suffix))):
                    _drop_database(connection, backend, existing)
            connection.execute(text(f"CREATE DATABASE {name}"))
    finally:
        engine.dispose()
    return parsed.set(database=name)


def drop_private_database(server_url: str | URL, private_url: URL) -> None:
    """Drop the database ``create_private_database`` made; connects as ``server_url`` does."""
    engine = _admin_engine(make_url(server_url))
    try:
        with engine.connect() as connection:
            _drop_database(connection, engine.dialect.name, str(private_url.database))
    finally:
        engine.dispose()


def drop_tables(url: str | URL, *tables: str) -> None:
    """Drop ``tables`` (if they exist), without waiting long for a lock held elsewhere."""
    engine = create_engine(sync_url(url))
    try:
        with engine.begin() as connection:
            backend = engine.dialect.name
            if backend == "postgresql":
                connection.execute(text("SET LOCAL lock_timeout = '10s'"))
            elif backend in ("mysql", "mariadb"):
                connection.execute(text("SET SESSION lock_wait_timeout = 10"))
            for table in tables:
                connection.execute(text(f"DROP TABLE IF EXISTS {table}"))
    finally:
        engine.dispose()


def create_tables(url: str | URL, metadata: MetaData) -> None:
    """Create a test's own tables afresh (dropping what is left of an earlier run)."""
    drop_tables(url, *reversed([table.name for table in metadata.sorted_tables]))
    engine = create_engine(sync_url(url))
    try:
        metadata.create_all(engine)
    finally:
        engine.dispose()


@contextmanager
def statements_sent() -> Iterator[list[str]]:
    """Every SQL statement the engines of this process send while the block runs."""
    sent: list[str] = []

    def note(connection: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(statement.lstrip().upper())

    event.listen(Engine, "before_cursor_execute", note)
    try:
        yield sent
    finally:
        event.remove(Engine, "before_cursor_execute", note)
