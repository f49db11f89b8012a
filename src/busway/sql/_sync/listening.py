# Generated from src/busway/sql/_async/listening.py by tools/unasync.py: do not edit.
# Change the asyncio source, then run `make generate`.
"""A PostgreSQL listener for the notifications of a ``SqlChannel`` table's trigger: how a
consumer that found nothing waits for the next message on PostgreSQL."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from busway.sql.database import Database
from busway.sql.statements import NOTIFY_CHANNEL

if TYPE_CHECKING:
    import psycopg


class Listener:
    """Listens on a connection of its own, opened at the first wait."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self._connection: psycopg.Connection[Any] | None = None

    def listen(self, database: Database, seconds: float) -> None:
        """Wait at most ``seconds`` for a notification of ``channel``."""
        import psycopg

        if self._connection is None or self._connection.closed:
            url = database.url.set(drivername="postgresql")
            self._connection = psycopg.Connection.connect(
                url.render_as_string(hide_password=False), autocommit=True
            )
            self._connection.execute(f"LISTEN {NOTIFY_CHANNEL}")
            return  # a message may have committed before LISTEN: look again at once
        for notify in self._connection.notifies(timeout=seconds):
            if notify.payload == self.channel:
                break

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
