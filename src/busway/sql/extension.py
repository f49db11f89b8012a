"""What ``Messaging(database=...)`` adds: transactions, Session injection, SQL dead letters."""

from __future__ import annotations

from typing import Any

from sqlalchemy.schema import CreateIndex, CreateTable

from busway.interceptors import Interceptor
from busway.sql.database import Database
from busway.sql.dead_letters import SqlDeadLetterStore
from busway.sql.heartbeats import SqlHeartbeatStore
from busway.sql.inbox import DeduplicationInterceptor, Inbox, KeyFunction, key_function
from busway.sql.interceptor import TransactionInterceptor
from busway.sql.transactions import DatabaseParameters


class SqlExtension:
    def __init__(
        self,
        database: Database,
        deduplication: bool = True,
        deduplicate_by: str | KeyFunction | None = None,
    ) -> None:
        self.database = database
        parameters = DatabaseParameters()
        self.providers = [parameters]
        self.inbox = Inbox(database)
        self.transactions = TransactionInterceptor(
            database, parameters.wants_database, parameters.wants_async_database
        )
        self.interceptors: list[Interceptor] = [self.transactions]
        if deduplication:
            self.interceptors.append(
                DeduplicationInterceptor(self.inbox, key_function(deduplicate_by))
            )
        self.dead_letters = SqlDeadLetterStore(database)
        self.heartbeats = SqlHeartbeatStore(database)

    def see_interceptors(self, interceptors: list[Interceptor]) -> None:
        """The application's own interceptors: one that runs inside the transaction may write
        through its Session or Connection, so every handler's savepoint then begins at once."""
        inside = [i for i in interceptors if i.order > self.transactions.order]
        self.transactions.eager_savepoints = bool(inside)

    @classmethod
    def from_database(
        cls,
        database: Any,
        deduplication: bool = True,
        deduplicate_by: str | KeyFunction | None = None,
    ) -> SqlExtension:
        return cls(Database.of(database), deduplication, deduplicate_by)

    @property
    def engine(self) -> Database:
        return self.database

    def setup(self) -> None:
        self.dead_letters.setup()
        self.inbox.setup()
        self.heartbeats.setup()

    async def asetup(self) -> None:
        self.setup()

    def ddl(self) -> list[str]:
        dialect = self.database.engine.dialect
        statements: list[str] = []
        for table in (self.dead_letters.table, self.inbox.table, self.heartbeats.table):
            statements.append(
                str(CreateTable(table, if_not_exists=True).compile(dialect=dialect)).strip()
            )
            statements += [
                str(CreateIndex(index, if_not_exists=True).compile(dialect=dialect)).strip()
                for index in table.indexes
            ]
        return statements

    def close(self) -> None:
        self.database.dispose()

    async def aclose(self) -> None:
        await self.database.adispose()
