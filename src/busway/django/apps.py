"""The ``busway.django`` app: checks ``settings.BUSWAY`` at start-up and sets busway's tables up
at the first connection a process makes, before any ``atomic()`` block can hold it."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core.checks import register
from django.db.backends.signals import connection_created

from busway.django.checks import sqlite_transactions
from busway.django.connection import busway_is_connecting
from busway.django.messaging import checked_messaging
from busway.django.settings import configured
from busway.messaging import Messaging


class BuswayConfig(AppConfig):  # type: ignore[misc]  # Django is untyped
    name = "busway.django"
    label = "busway"
    verbose_name = "busway"

    def ready(self) -> None:
        register(sqlite_transactions, "database")
        found = configured()
        messaging = checked_messaging(found)
        connection_created.connect(
            _set_up_at_first_connection(messaging, found.database),
            weak=False,
            dispatch_uid="busway.django.setup",
        )


def _set_up_at_first_connection(messaging: Messaging, alias: str) -> Any:
    """With ``auto_setup`` (the default), busway's tables are made at the first connection to
    ``alias``: a new connection is outside any ``atomic()`` block, so its DDL commits on its own
    (MariaDB would otherwise commit the application's transaction with it)."""
    preparation = messaging.runtime.preparation

    def set_up(sender: Any, connection: Any, **_: Any) -> None:
        if connection.alias == alias and not preparation.sql.done and not busway_is_connecting():
            preparation.dispatching()

    return set_up
