"""Django system checks (``manage.py check``) of the database busway writes to."""

from __future__ import annotations

from typing import Any

from django.core.checks import Warning as CheckWarning
from django.db import connections

from busway.django.settings import configured_alias


def sqlite_transactions(app_configs: Any = None, **_: Any) -> list[Any]:
    """On SQLite, a worker's claim needs the write lock when its transaction begins."""
    alias = configured_alias()
    wrapper = connections[alias]
    if wrapper.vendor != "sqlite":
        return []
    options = wrapper.settings_dict.get("OPTIONS") or {}
    if str(options.get("transaction_mode", "")).upper() == "IMMEDIATE":
        return []
    return [
        CheckWarning(
            f"the SQLite database {alias!r} busway writes to begins its transactions DEFERRED, "
            "so a worker's claim can fail with 'database is locked' beside another writer",
            hint=(
                f'set DATABASES[{alias!r}]["OPTIONS"] = {{"transaction_mode": "IMMEDIATE", '
                '"timeout": 30, "init_command": "PRAGMA journal_mode=WAL"}'
            ),
            id="busway.W001",
        )
    ]
