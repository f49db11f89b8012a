"""The busway.django tests run under pytest-django, with the settings of ``djsettings``."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import djsettings  # noqa: E402

djsettings.configure()

from django.conf import settings  # noqa: E402
from sqlalchemy import create_engine, func, select  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from dbsupport import SERVERS, require_service  # noqa: E402

SERVICES = {"default": "sqlite", "postgresql": "postgresql", "mariadb": "mariadb"}


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: Any) -> None:
    """The test databases, with busway's tables in each: made here, outside any test's
    transaction (MariaDB commits a transaction at any CREATE TABLE). A project's one
    Messaging makes them at its first connection; the tests have one per database."""
    from djtest.messaging import messaging_for

    with django_db_blocker.unblock():
        for alias in SERVICES:
            if alias in settings.DATABASES:
                messaging_for(alias).setup()


@pytest.fixture(params=list(SERVICES), ids=list(SERVICES.values()))
def alias(request: pytest.FixtureRequest) -> str:
    """Each database alias busway is tested on: SQLite, PostgreSQL, MariaDB."""
    service = SERVICES[request.param]
    if service != "sqlite" and request.param not in settings.DATABASES:
        require_service(service, make_url(SERVERS[service]))  # skips, or fails on CI
    return str(request.param)


@pytest.fixture
def messaging(alias: str, django_db_blocker: object) -> Iterator[object]:
    """The tests' Messaging on ``alias``, its tables emptied."""
    from djtest.messaging import TABLE, messaging_for

    found = messaging_for(alias)
    found.setup()
    empty(alias, TABLE, "busway_dead_letters", "busway_inbox")
    yield found
    empty(alias, TABLE, "busway_dead_letters", "busway_inbox")


def empty(alias: str, *tables: str) -> None:
    from django.db import connections

    with connections[alias].cursor() as cursor:
        for table in tables:
            cursor.execute(f"DELETE FROM {table}")


def rows_seen_from_outside(alias: str, table: str = "busway_dj_messages") -> int:
    """The rows of ``table`` a connection of its own sees: what is committed."""
    from busway.django import django_database

    engine = create_engine(django_database(alias).url)
    try:
        with engine.connect() as connection:
            found = connection.execute(select(func.count()).select_from(_table(table))).scalar_one()
    finally:
        engine.dispose()
    return int(found)


def _table(name: str) -> object:
    from sqlalchemy import table

    return table(name)
