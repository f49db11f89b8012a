"""What ``Messaging(database=...)`` adds: transactions, Session injection, SQL dead letters."""

from __future__ import annotations

from typing import Any

from sqlalchemy.schema import CreateIndex, CreateTable

from busway.sql.database import Database
from busway.sql.dead_letters import SqlDeadLetterStore
from busway.sql.transactions import DatabaseParameters, TransactionInterceptor


class SqlExtension:
    def __init__(self, database: Database) -> None:
        self.database = database
        parameters = DatabaseParameters()
        self.providers = [parameters]
        self.interceptors = [TransactionInterceptor(database, parameters.wants_database)]
        self.dead_letters = SqlDeadLetterStore(database)

    @classmethod
    def from_database(cls, database: Any) -> SqlExtension:
        return cls(Database.of(database))

    @property
    def engine(self) -> Database:
        return self.database

    def setup(self) -> None:
        self.dead_letters.setup()

    async def asetup(self) -> None:
        self.setup()

    def ddl(self) -> list[str]:
        dialect = self.database.engine.dialect
        table = self.dead_letters.table
        return [
            str(CreateTable(table, if_not_exists=True).compile(dialect=dialect)).strip(),
            *(
                str(CreateIndex(index, if_not_exists=True).compile(dialect=dialect)).strip()
                for index in table.indexes
            ),
        ]

    def close(self) -> None:
        self.database.dispose()
