"""The dead letter store as a table of the application's database."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec
from sqlalchemy import Connection, MetaData, Table, delete, insert, inspect, select
from sqlalchemy.ext.asyncio import AsyncConnection

from busway.channels.reading import kept_raw, readable
from busway.message import ORDERING_KEY
from busway.ordering import stored_key
from busway.recovery import DeadLetter
from busway.sql.creating import check_columns, missing_indexes, set_up
from busway.sql.database import Database
from busway.sql.schema import dead_letters_table
from busway.sql.transactions import Transaction, open_transaction

_encode = msgspec.json.Encoder().encode


class SqlDeadLetterStore:
    """Dead letters in ``busway_dead_letters``.

    A letter written while a message is claimed in a transaction commits with the
    acknowledgement of that message, or not at all: the message never vanishes in between.
    A letter of a keyed message holds back the later messages of its key on a ``SqlChannel``
    of the same database until it is replayed or deleted (skipped).
    """

    def __init__(self, database: Database, table: str = "busway_dead_letters") -> None:
        self.database = database
        self.table: Table = dead_letters_table(MetaData(), table)
        database.tables.add(table)

    def setup(self) -> None:
        set_up(self.database, self._is_set_up, self._create)

    def _is_set_up(self, connection: Connection) -> bool:
        if not inspect(connection).has_table(self.table.name):
            return False
        check_columns(connection, self.table)
        return not missing_indexes(connection, self.table)

    def _create(self, connection: Connection) -> None:
        self.table.create(connection, checkfirst=True)
        check_columns(connection, self.table)
        for index in missing_indexes(connection, self.table):
            index.create(connection, checkfirst=True)

    def add(self, letter: DeadLetter) -> None:
        row = self._row(letter)
        transaction = open_transaction(self.database.key, asynchronous=False)
        if transaction is not None:
            assert isinstance(transaction.connection, Connection)
            transaction.connection.execute(insert(self.table), row)
            _note_held(transaction, row)
            return
        with self.database.engine.begin() as connection:
            connection.execute(insert(self.table), row)

    def _row(self, letter: DeadLetter) -> dict[str, Any]:
        return {
            "id": letter.id,
            "channel": letter.channel,
            "handler": letter.handler,
            # The full id stays in the headers; the column only needs enough to find it by.
            "message_id": None if letter.message_id is None else letter.message_id[:64],
            "headers": _encode(dict(letter.headers)).decode(),
            "body": letter.body,
            "error_type": letter.error_type,
            "error_message": letter.error_message,
            "traceback": letter.traceback,
            "attempts": letter.attempts,
            "failed_at": letter.failed_at,
            "ordering_key": stored_key(letter.headers.get(ORDERING_KEY)),
        }

    async def aadd(self, letter: DeadLetter) -> None:
        transaction = open_transaction(self.database.key, asynchronous=True)
        if transaction is None:
            self.add(letter)
            return
        assert isinstance(transaction.connection, AsyncConnection)
        row = self._row(letter)
        await transaction.connection.execute(insert(self.table), row)
        _note_held(transaction, row)

    def list(self, *, channel: str | None = None, handler: str | None = None) -> list[DeadLetter]:
        query = select(self.table).order_by(self.table.c.failed_at)
        if channel is not None:
            query = query.where(self.table.c.channel == channel)
        if handler is not None:
            query = query.where(self.table.c.handler == handler)
        with self.database.reading() as connection:
            return [_letter(row) for row in connection.execute(query)]

    def get(self, letter_id: str) -> DeadLetter | None:
        with self.database.reading() as connection:
            row = connection.execute(select(self.table).where(self.table.c.id == letter_id)).first()
        return None if row is None else _letter(row)

    def delete(self, letter_ids: Iterable[str]) -> int:
        ids = list(letter_ids)
        if not ids:
            return 0
        with self.database.engine.begin() as connection:
            return connection.execute(delete(self.table).where(self.table.c.id.in_(ids))).rowcount


def _headers(raw: str) -> dict[str, Any]:
    """A letter's headers; kept raw if the row was changed into something unreadable."""
    headers = readable(raw)
    return kept_raw(raw) if headers is None else headers


def _letter(row: Any) -> DeadLetter:
    return DeadLetter(
        id=row.id,
        channel=row.channel,
        handler=row.handler,
        body=bytes(row.body),
        headers=_headers(row.headers),
        error_type=row.error_type,
        error_message=row.error_message,
        traceback=row.traceback,
        attempts=row.attempts,
        failed_at=row.failed_at,
    )


def _note_held(transaction: Transaction, row: dict[str, Any]) -> None:
    """A keyed letter holds its key back in ``transaction``."""
    if row["ordering_key"] is not None and row["channel"] is not None:
        transaction.held_keys.add((row["channel"], row["ordering_key"]))
