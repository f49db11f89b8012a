"""A PostgreSQL listener for the notifications of a ``SqlChannel`` table's trigger: how a
consumer that found nothing waits for the next message on PostgreSQL."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from busway.sql.database import Database
from busway.sql.statements import NOTIFY_CHANNEL

if TYPE_CHECKING:
    import psycopg


class AsyncListener:
    """Listens on a connection of its own, opened at the first wait."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self._connection: psycopg.AsyncConnection[Any] | None = None

    async def alisten(self, database: Database, seconds: float) -> None:
        """Wait at most ``seconds`` for a notification of ``channel``."""
        import psycopg

        if self._connection is None or self._connection.closed:
            url = database.url.set(drivername="postgresql")
            self._connection = await psycopg.AsyncConnection.connect(
                url.render_as_string(hide_password=False), autocommit=True
            )
            await self._connection.execute(f"LISTEN {NOTIFY_CHANNEL}")
            return  # a message may have committed before LISTEN: look again at once
        async for notify in self._connection.notifies(timeout=seconds):
            if notify.payload == self.channel:
                break

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()
