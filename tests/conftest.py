"""Fixtures shared by every test folder: the databases the SQL tests run against.

``database_url`` runs a test once per database: a fresh SQLite file, and the PostgreSQL and
MariaDB servers on loopback (override their URLs with ``BUSWAY_TEST_POSTGRESQL_URL`` and
``BUSWAY_TEST_MARIADB_URL``), in a database this run makes for itself. A server that cannot
be reached skips its tests, except on CI (``CI=true``), where it fails them: a missing service
must never pass unnoticed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from sqlalchemy.engine import URL, make_url

from busway import Messaging
from dbsupport import (
    BUSWAY_TABLES,
    SERVERS,
    create_private_database,
    drop_private_database,
    drop_tables,
    require_service,
)


@pytest.fixture(scope="session")
def private_databases() -> Iterator[dict[str, URL]]:
    """This run's own database on each server, made when first asked for."""
    made: dict[str, URL] = {}
    yield made
    for service, url in made.items():
        drop_private_database(SERVERS[service], url)


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Any, private_databases: dict[str, URL]
) -> str:
    """A database without busway's tables: each test sets up its own."""
    service = request.param
    if service == "sqlite":
        return f"sqlite:///{tmp_path / 'busway.db'}"
    server_url = SERVERS[service]
    require_service(service, make_url(server_url))
    if service not in private_databases:
        private_databases[service] = create_private_database(server_url)
    url = private_databases[service].render_as_string(hide_password=False)
    drop_tables(url, *BUSWAY_TABLES)
    return url


MakeMessaging = Callable[..., Messaging]


@pytest.fixture
async def make_messaging(database_url: str) -> AsyncIterator[MakeMessaging]:
    """Build a ``Messaging`` on ``database_url`` (unless given ``database=``), set it up.

    Every ``Messaging`` made is closed when the test ends, asyncio connections included, so
    no connection outlives it.
    """
    made: list[Messaging] = []

    def make(handlers: Any = (), channels: Any = (), **options: Any) -> Messaging:
        options.setdefault("database", database_url)
        messaging = Messaging(handlers=handlers, channels=channels, **options)
        made.append(messaging)
        messaging.setup()
        return messaging

    yield make
    for messaging in made:
        await messaging.aclose()
