"""``django_database()``: busway's database as Django's own connection of one alias."""

from __future__ import annotations

import threading
from typing import Any

from django.db import connections
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from busway.django.connection import dialect_of, django_engine
from busway.django.settings import configured_alias, database_alias
from busway.errors import ConfigurationError
from busway.sql.database import Database

_made: dict[str, DjangoDatabase] = {}
_lock = threading.Lock()


class DjangoDatabase(Database):
    """The database of Django's alias ``alias``, reached through Django's connections.

    Every statement busway runs goes through the calling thread's Django connection, in
    Django's transaction when a ``transaction.atomic()`` block is open. Only the sync API joins
    it: the asyncio paths (``asend``, ``apublish``, ``arun``) are refused.
    """

    def __init__(self, alias: str) -> None:
        self.alias = alias
        tables: set[str] = set()
        super().__init__(django_engine(alias, tables), None, self.url)
        self.tables = tables  # the engine's refusal reads it as channels attach

    @property
    def url(self) -> URL:
        """The database Django's settings name now (a test run's database, in tests)."""
        return _url_of(self.alias)

    @url.setter
    def url(self, _: URL) -> None:
        pass  # always read from Django's settings

    @property
    def async_engine(self) -> AsyncEngine:
        raise ConfigurationError(_SYNC_ONLY)

    @property
    def worker_async_engine(self) -> AsyncEngine:
        raise ConfigurationError(_SYNC_ONLY)

    @property
    def described(self) -> str:
        return f"Django database {self.alias!r} ({super().described})"

    def __repr__(self) -> str:
        return f"DjangoDatabase({self.alias!r})"


_SYNC_ONLY = (
    "busway.django joins Django's transactions from sync code only: use send() and publish() "
    "(not asend/apublish), and `manage.py busway run` or messaging.run() (not arun)"
)


def django_database(alias: str | None = None) -> DjangoDatabase:
    """The database to pass as ``Messaging(database=...)``: Django's connection of ``alias``
    (default: ``settings.BUSWAY['DATABASE']``, else ``'default'``). One per alias."""
    alias = configured_alias() if alias is None else database_alias(alias)
    with _lock:
        if alias not in _made:
            _made[alias] = DjangoDatabase(alias)
        return _made[alias]


def _url_of(alias: str) -> URL:
    wrapper = connections[alias]
    found: dict[str, Any] = wrapper.settings_dict
    dialect = dialect_of(wrapper.Database)
    if dialect.startswith("sqlite"):
        return URL.create(dialect, database=str(found["NAME"]))
    port = found.get("PORT")
    return URL.create(
        dialect,
        username=found.get("USER") or None,
        password=found.get("PASSWORD") or None,
        host=found.get("HOST") or None,
        port=int(port) if port else None,
        database=found.get("NAME") or None,
    )
