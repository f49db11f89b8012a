"""What ``Messaging`` does on its database: the transactions outbox channels join, the tables
set up at first use, their DDL, and the inbox's cleanup. ``busway.sql`` is imported only
when ``Messaging(database=...)`` is given."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from busway._internal.preparation import Preparation
from busway.channels.base import Channel
from busway.errors import ConfigurationError
from busway.message import Message


def database_extension(
    database: Any,
    deduplication: bool,
    deduplicate_by: str | Callable[[Message[Any]], str | None] | None,
) -> Any:
    from busway.sql.extension import SqlExtension

    return SqlExtension.from_database(database, deduplication, deduplicate_by)


def sql_channels(channels: Mapping[str, Channel]) -> set[str]:
    """The channels whose queues are tables: those ``setup_sql`` has DDL for."""
    return {name for name, channel in channels.items() if callable(_ddl(channel))}


@dataclass(frozen=True, slots=True)
class Tables:
    """busway's own tables and every SQL channel's: what ``auto_setup`` creates at once."""

    extension: Any
    channels: Sequence[Channel]
    schedules: bool
    """Whether the schedules' table is among them."""

    def setup(self) -> None:
        if self.extension is not None:
            self.extension.setup()
        for channel in self.channels:
            channel.setup()
        if self.schedules and self.extension is not None:
            from busway.sql.schedules import setup_schedules

            setup_schedules(self.extension.database)


class MessagingDatabase:
    """``Messaging(database=...)`` in use: its extension (None without a database), the
    channels whose DDL it lists, and the set-up due before a transaction opens."""

    def __init__(
        self, extension: Any, channels: Mapping[str, Channel], preparation: Preparation
    ) -> None:
        self.extension = extension
        self._channels = channels
        self._preparation = preparation

    def require(self, what: str) -> Any:
        """The database, for ``messaging.<what>``; a ``ConfigurationError`` without one."""
        if self.extension is None:
            raise ConfigurationError(
                f"messaging.{what} needs a database; pass Messaging(database=...)"
            )
        return self.extension.database

    def transaction(self, session: Any = None) -> AbstractContextManager[Any]:
        from busway.sql._sync.scopes import transaction_scope

        database = self.require("transaction()")
        self._preparation.dispatching()  # before the transaction: it holds SQLite's lock
        return transaction_scope(database, session)

    def atransaction(self, session: Any = None) -> AbstractAsyncContextManager[Any]:
        from busway.sql._async.scopes import atransaction_scope

        scope = atransaction_scope(self.require("atransaction()"), session)
        return _after(self._preparation.adispatching, scope)

    def ddl(self) -> list[str]:
        statements: list[str] = list(self.extension.ddl()) if self.extension else []
        for channel in self._channels.values():
            ddl = _ddl(channel)
            if callable(ddl):
                statements += [s for s in ddl() if s not in statements]
        return statements

    def cleanup_inbox(self, older_than: float) -> int:
        self.require("cleanup_inbox()")
        self._preparation.sql()
        return int(self.extension.inbox.cleanup(older_than))


def _ddl(channel: Channel) -> Any:
    return getattr(channel, "ddl", None)


@asynccontextmanager
async def _after(
    prepare: Callable[[], Awaitable[None]], scope: AbstractAsyncContextManager[Any]
) -> AsyncIterator[Any]:
    await prepare()
    async with scope as value:
        yield value
