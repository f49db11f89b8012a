"""``SqlChannel``: messages kept in a table of PostgreSQL, MariaDB/MySQL or SQLite.

Sending inside an open transaction on the same database writes through that transaction:
that is the outbox. Consuming claims a batch with ``FOR UPDATE SKIP LOCKED`` (a write lock
on SQLite) and, in the default ``transaction`` mode, runs every handler and deletes what was
handled in that one transaction: a crash anywhere rolls it all back for a later delivery.
``lease`` mode instead marks the batch taken for ``visibility_timeout`` seconds and commits
at once, for handlers that must not hold a transaction open; a claim left by a dead worker
becomes available again when its lease runs out.

In ``transaction`` mode each handler runs under a savepoint of the batch transaction, so a
failing one undoes only its own writes. ``redo_batches=True`` skips the savepoints, which
doubles throughput on a fast database: when a handler fails, the batch is rolled back and
redone, and the handlers of the messages before it run again. Their database writes still
count once; anything else they do (an e-mail, an HTTP call) happens again. Use it for
handlers whose effects all live in the database. A transaction the database itself ends (a
deadlock victim on MariaDB, a killed connection) is never acknowledged: the batch is redone
in a new one (``busway.sql.redo``).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any

import msgspec
from sqlalchemy import Connection, MetaData, Table, inspect
from sqlalchemy.schema import CreateTable

from busway.channels.base import (
    AsyncHandle,
    Channel,
    ChannelContext,
    Envelope,
    Handle,
)
from busway.errors import BuswayError
from busway.message import ID, ORDERING_KEY, POSITION, PRIORITY
from busway.ordering import priority_of, stored_key
from busway.sql._async import consuming as aconsuming
from busway.sql._async import idling as aidling
from busway.sql._async import sending as asending
from busway.sql._sync import consuming, idling, sending
from busway.sql.consumer import Mode, SqlConsumer
from busway.sql.crashes import InHand
from busway.sql.creating import check_columns, has_trigger, missing_indexes, set_up
from busway.sql.database import Database
from busway.sql.dead_letters import SqlDeadLetterStore
from busway.sql.rows import place_on
from busway.sql.schema import in_hand_table, messages_table
from busway.sql.statements import Statements
from busway.sql.transactions import Transaction, open_transaction
from busway.sql.turns import Turns, lock_file
from busway.sql.waiting import Waiting

_encode = msgspec.json.Encoder().encode
_AFTER_ADDING = {"queued_at": "UPDATE {table} SET queued_at = available_at"}
"""What to run after adding a column an earlier version's table lacks, by its name."""


class SqlChannel(Channel):
    """A channel in a SQL table; with the application's database, an outbox."""

    def __init__(
        self,
        name: str,
        database: Any = None,
        *,
        mode: Mode = "transaction",
        batch_size: int = 100,
        redo_batches: bool = False,
        visibility_timeout: float = 30.0,
        poll_interval: float = 0.5,
        table: str = "busway_messages",
        priorities: bool = False,
    ) -> None:
        if mode not in ("transaction", "lease"):
            raise ValueError(f"SqlChannel mode is 'transaction' or 'lease', not {mode!r}")
        self.name = name
        self.mode = mode
        self.batch_size = batch_size
        self.redo_batches = redo_batches
        self.visibility_timeout = visibility_timeout
        self.poll_interval = poll_interval
        self.priorities = priorities
        self._letters: Table | None = None
        self._letters_store: SqlDeadLetterStore | None = None
        """The dead letter store whose letters of a key hold the key back: its table is read by
        every claim, so the channel's set-up makes it too."""
        self._own_database = Database.of(database) if database is not None else None
        self._database: Database | None = self._own_database
        self.table: Table = messages_table(MetaData(), table, priorities=priorities)
        self.in_hand_table: Table = in_hand_table(MetaData(), f"{table}_in_hand")
        self._max_crashes: int | None = 3
        self._clock: Callable[[], float] = time.time
        self._waiting = Waiting(name, poll_interval)

    def __repr__(self) -> str:
        return f"SqlChannel({self.name!r}, mode={self.mode!r})"

    # -- configuration ---------------------------------------------------------------------

    def attach(self, context: ChannelContext) -> None:
        self._clock = context.clock
        self._max_crashes = context.max_crashes
        if self._database is None and context.database is not None:
            self._database = Database.of(context.database)
        if self._database is not None:
            self._database.tables.update((self.table.name, self.in_hand_table.name))
            store = context.dead_letters
            if isinstance(store, SqlDeadLetterStore) and store.database.key == self._database.key:
                self._letters = store.table
                self._letters_store = store

    def validate(self) -> list[str]:
        if self._database is None:
            return [
                f"SqlChannel {self.name!r} has no database; pass Messaging(database=...) or "
                f"SqlChannel({self.name!r}, database=...)"
            ]
        return []

    @property
    def database(self) -> Database:
        if self._database is None:
            raise RuntimeError(self.validate()[0])
        return self._database

    @functools.cached_property
    def _sql(self) -> Statements:
        """The channel's statements, for its database's backend (known once attached)."""
        return Statements(
            self.table,
            self.name,
            self.database.backend,
            letters=self._letters,
            priorities=self.priorities,
        )

    @functools.cached_property
    def _in_hand(self) -> InHand | None:
        """The notes of the messages in hand in ``transaction`` mode; None when the
        crash-loop guard is off (``Messaging(max_crashes=None)``)."""
        if self._max_crashes is None or self.mode != "transaction":
            return None
        sql = self._sql
        claim, _ = sql.claim(0, 0.0)
        return InHand(self.table, self.in_hand_table, self.name, self.database.backend, claim, sql)

    def ddl(self) -> list[str]:
        """The statements ``setup`` runs, for those who migrate with Alembic or by hand."""
        dialect = self.database.engine.dialect
        notes = CreateTable(self.in_hand_table, if_not_exists=True).compile(dialect=dialect)
        return [*self._sql.ddl(dialect), str(notes).strip()]

    def setup(self) -> None:
        if self._letters_store is not None:
            self._letters_store.setup()
        set_up(self.database, self._is_set_up, self._create)

    def _is_set_up(self, connection: Connection) -> bool:
        found = inspect(connection)
        if not all(found.has_table(table.name) for table in (self.table, self.in_hand_table)):
            return False
        self._check_columns(connection)
        if missing_indexes(connection, self.table):
            return False
        if self.database.backend == "postgresql":
            return has_trigger(connection, self.table.name, f"{self.table.name}_notify")
        return True

    def _create(self, connection: Connection) -> None:
        self.table.create(connection, checkfirst=True)
        self.in_hand_table.create(connection, checkfirst=True)
        self._check_columns(connection)
        for index in missing_indexes(connection, self.table):
            index.create(connection, checkfirst=True)
        if self.database.backend == "postgresql":
            for statement in self._sql.notify_trigger():
                connection.exec_driver_sql(statement)

    async def asetup(self) -> None:
        await asyncio.to_thread(self.setup)

    def _check_columns(self, connection: Connection) -> None:
        """A table made by an earlier version may lack columns: say which, and how to add them."""
        check_columns(
            connection, self.table, {"queued_at": "UPDATE {table} SET queued_at = available_at"}
        )

    # -- sending ---------------------------------------------------------------------------

    def _row(self, envelope: Envelope) -> dict[str, Any]:
        headers = envelope.headers
        deliver_at = envelope.deliver_at
        due = int((deliver_at if deliver_at is not None else self._clock()) * 1000)
        key = stored_key(headers.get(ORDERING_KEY))
        return {
            "channel": self.name,
            "available_at": due,
            "queued_at": due,
            "message_id": str(headers.get(ID, "")),
            "headers": _encode(headers).decode(),
            "body": envelope.body,
            "deliveries": 0,
            "ordering_key": key,
            "position": None if key is None else place_on(self.name, headers.get(POSITION)),
            "priority": priority_of(headers.get(PRIORITY)),
        }

    def send(self, envelope: Envelope) -> None:
        transaction = open_transaction(self.database.key, asynchronous=False)
        if transaction is None and open_transaction(self.database.key, asynchronous=True):
            raise BuswayError(
                f"SqlChannel {self.name!r}: a message sent without await here would commit "
                "outside the asyncio transaction that is open; in async code, use "
                "await bus.asend(...) or await events.apublish(...)"
            )
        row = self._row(envelope)
        _note_held(transaction, row)
        sending.write(self.database, self._sql, transaction, row, self._wake_local)

    async def asend(self, envelope: Envelope) -> None:
        transaction = open_transaction(self.database.key, asynchronous=True)
        if transaction is None and open_transaction(self.database.key, asynchronous=False):
            # A sync transaction is open on this thread (a def handler on the asyncio path).
            self.send(envelope)
            return
        row = self._row(envelope)
        _note_held(transaction, row)
        await asending.awrite(self.database, self._sql, transaction, row, self._wake_local)

    # -- consuming -------------------------------------------------------------------------

    @functools.cached_property
    def _consumer(self) -> SqlConsumer:
        """What consuming needs, made at the first consume: after ``attach``."""
        idle = (self._waiting, self.database, self._sql.next_due(), self._clock)
        return SqlConsumer(
            name=self.name,
            database=self.database,
            sql=self._sql,
            clock=self._clock,
            mode=self.mode,
            batch_size=self.batch_size,
            redo_batches=self.redo_batches,
            visibility_timeout=self.visibility_timeout,
            in_hand=self._in_hand,
            guarded=self._max_crashes is not None,
            wait_idle=functools.partial(idling.wait_idle, *idle),
            await_idle=functools.partial(aidling.await_idle, *idle),
            poll_interval=self.poll_interval,
            turns=Turns(lock_file(self.database.url)),
        )

    def consume(self, handle: Handle, max_messages: int, wait: float) -> int:
        return consuming.consume(self._consumer, handle, max_messages, wait)

    async def aconsume(self, handle: AsyncHandle, max_messages: int, wait: float) -> int:
        return await aconsuming.aconsume(self._consumer, handle, max_messages, wait)

    # -- waking ----------------------------------------------------------------------------

    def interrupt(self) -> None:
        self._wake_local()  # a PostgreSQL listener's wait ends at its timeout

    def _wake_local(self) -> None:
        self._waiting.wake_local()

    # -- inspection ------------------------------------------------------------------------

    def waiting(self, ordering_key: str) -> int:
        """How many messages of ``ordering_key`` wait on the channel."""
        key = stored_key(ordering_key)
        with self.database.reading() as connection:
            count = connection.execute(self._sql.waiting(key)).scalar()
        return int(count or 0)

    def depth(self) -> int:
        with self.database.reading() as connection:
            count = connection.execute(self._sql.depth()).scalar()
        return int(count or 0)

    def oldest_age(self) -> float | None:
        """Seconds since the oldest message due on the channel was first due: how far its
        consumers (an outbox's relay) are behind. Retries kept back do not reset it."""
        now = self._clock()
        with self.database.reading() as connection:
            oldest = connection.execute(self._sql.first_queued(now)).scalar()
        return None if oldest is None else max(0.0, now - oldest / 1000)

    def close(self) -> None:
        self._waiting.close()
        if self._own_database is not None:
            self._own_database.dispose()

    async def aclose(self) -> None:
        await self._waiting.aclose()
        if self._own_database is not None:
            await self._own_database.adispose()
        self.close()


def _note_held(transaction: Transaction | None, row: dict[str, Any]) -> None:
    """A message sent again to keep its place holds its key back in ``transaction``."""
    if transaction is not None and row["position"] is not None:
        transaction.held_keys.add((row["channel"], row["ordering_key"]))
