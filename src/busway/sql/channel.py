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
handlers whose effects all live in the database.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from sqlalchemy import (
    Connection,
    MetaData,
    Row,
    Table,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.schema import CreateIndex, CreateTable

from busway._internal.steps import adrive, drive
from busway.channels.base import (
    AsyncHandle,
    Batch,
    BatchRollback,
    Channel,
    ChannelContext,
    Delivery,
    Envelope,
    Handle,
    MessageReturned,
    Unsent,
    current_batch,
)
from busway.errors import BuswayError
from busway.message import ID
from busway.sql.database import Database
from busway.sql.schema import messages_table
from busway.sql.transactions import Transaction, current_transaction, open_transaction

Mode = Literal["transaction", "lease"]

log = logging.getLogger("busway.sql")

_UNKNOWN = object()
_next_due: ContextVar[Any] = ContextVar("busway_sql_next_due", default=_UNKNOWN)
"""What the last empty claim in this context found: the channel's earliest ``available_at``."""

_decode_headers = msgspec.json.Decoder(dict[str, Any]).decode
_encode = msgspec.json.Encoder().encode
_NOTIFY = "busway_messages"
_BUSY_PAUSE = 0.05
_KEPT_BACK_PAUSE = 1.0
"""Seconds a message whose send failed waits before it is tried again; doubled each time."""
_LONGEST_KEPT_BACK_PAUSE = 60.0
_RELAY_BATCH_FACTOR = 5
"""After a full batch of messages that were all only sent on (a relay's), the next claim takes
up to this many times ``batch_size``: such a batch has no handler to run again, and fewer,
larger batches keep more of a broker's confirms in flight."""


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
    ) -> None:
        if mode not in ("transaction", "lease"):
            raise ValueError(f"SqlChannel mode is 'transaction' or 'lease', not {mode!r}")
        self.name = name
        self.mode = mode
        self.batch_size = batch_size
        self.redo_batches = redo_batches
        self.visibility_timeout = visibility_timeout
        self.poll_interval = poll_interval
        self._own_database = Database.of(database) if database is not None else None
        self._database: Database | None = self._own_database
        self.table: Table = messages_table(MetaData(), table)
        self._clock: Callable[[], float] = time.time
        self._wakeup = threading.Condition()
        self._listener: Any = None
        self._alistener: Any = None
        self._relaying = False
        self._inserts: dict[Any, tuple[str, tuple[str, ...]]] = {}

    def __repr__(self) -> str:
        return f"SqlChannel({self.name!r}, mode={self.mode!r})"

    # -- configuration ---------------------------------------------------------------------

    def attach(self, context: ChannelContext) -> None:
        self._clock = context.clock
        if self._database is None and context.database is not None:
            self._database = Database.of(context.database)

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

    def ddl(self) -> list[str]:
        """The statements ``setup`` runs, for those who migrate with Alembic or by hand."""
        dialect = self.database.engine.dialect
        statements = [str(CreateTable(self.table, if_not_exists=True).compile(dialect=dialect))]
        statements += [
            str(CreateIndex(index, if_not_exists=True).compile(dialect=dialect))
            for index in self.table.indexes
        ]
        if self.database.backend == "postgresql":
            statements += _notify_trigger(self.table.name)
        return [statement.strip() for statement in statements]

    def setup(self) -> None:
        with self.database.engine.begin() as connection:
            self.table.create(connection, checkfirst=True)
            if self.database.backend == "postgresql":
                for statement in _notify_trigger(self.table.name):
                    connection.exec_driver_sql(statement)

    async def asetup(self) -> None:
        await asyncio.to_thread(self.setup)

    # -- sending ---------------------------------------------------------------------------

    def _row(self, envelope: Envelope) -> dict[str, Any]:
        deliver_at = envelope.deliver_at
        due = int((deliver_at if deliver_at is not None else self._clock()) * 1000)
        return {
            "channel": self.name,
            "available_at": due,
            "queued_at": due,
            "message_id": str(envelope.headers.get(ID, "")),
            "headers": _encode(envelope.headers).decode(),
            "body": envelope.body,
            "deliveries": 0,
        }

    def _insert(self, connection: Connection | AsyncConnection, row: dict[str, Any]) -> Any:
        """The INSERT of ``row`` as the driver's SQL and parameters, compiled once per dialect:
        sending is the outbox's hot path, and compiling each time costs more than the insert."""
        dialect = connection.dialect
        compiled = self._inserts.get(dialect)
        if compiled is None:
            statement = insert(self.table).inline().compile(dialect=dialect, column_keys=list(row))
            positions = tuple(statement.positiontup or ())
            compiled = self._inserts[dialect] = (statement.string, positions)
        sql, positions = compiled
        return sql, tuple(row[key] for key in positions) if positions else row

    def send(self, envelope: Envelope) -> None:
        row = self._row(envelope)
        transaction = open_transaction(self.database.key, asynchronous=False)
        if transaction is None and open_transaction(self.database.key, asynchronous=True):
            raise BuswayError(
                f"SqlChannel {self.name!r}: a message sent without await here would commit "
                "outside the asyncio transaction that is open; in async code, use "
                "await bus.asend(...) or await events.apublish(...)"
            )
        if transaction is not None:
            assert isinstance(transaction.connection, Connection)
            transaction.begin_writes()
            transaction.connection.exec_driver_sql(*self._insert(transaction.connection, row))
            transaction.after_commit.append(self._wake_local)
            return
        with self._autocommit() as connection:
            connection.exec_driver_sql(*self._insert(connection, row))
        self._wake_local()

    def _autocommit(self) -> AbstractContextManager[Connection]:
        """A connection for one statement that commits by itself: on PostgreSQL, without
        the round trips of BEGIN and COMMIT."""
        if self.database.backend == "postgresql":
            return self.database.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        return self.database.engine.begin()

    async def asend(self, envelope: Envelope) -> None:
        row = self._row(envelope)
        transaction = open_transaction(self.database.key, asynchronous=True)
        if transaction is not None:
            assert isinstance(transaction.connection, AsyncConnection)
            await transaction.abegin_writes()
            await transaction.connection.exec_driver_sql(*self._insert(transaction.connection, row))
            transaction.after_commit.append(self._wake_local)
            return
        if open_transaction(self.database.key, asynchronous=False) is not None:
            # A sync transaction is open on this thread (a def handler on the asyncio path).
            self.send(envelope)
            return
        async with self.database.async_engine.begin() as connection:
            await connection.exec_driver_sql(*self._insert(connection, row))
        self._wake_local()

    # -- consuming -------------------------------------------------------------------------

    def _claim(self, limit: int) -> tuple[Any, dict[str, int]]:
        """The claim of up to ``limit`` messages due now, and its parameters."""
        return self._claim_statement, {"now": int(self._clock() * 1000), "limit": limit}

    @functools.cached_property
    def _claim_statement(self) -> Any:
        table = self.table
        query = (
            select(
                table.c.seq, table.c.message_id, table.c.headers, table.c.body, table.c.deliveries
            )
            .where(table.c.channel == self.name, table.c.available_at <= bindparam("now"))
            .order_by(table.c.available_at, table.c.seq)
            .limit(bindparam("limit"))
        )
        if self.database.backend != "sqlite":
            query = query.with_for_update(skip_locked=True)
        return query

    def _lease(self, seqs: list[int]) -> tuple[Any, Any]:
        until = int((self._clock() + self.visibility_timeout) * 1000)
        statement = update(self.table).values(
            available_at=until, deliveries=self.table.c.deliveries + 1
        )
        return self._by_key(statement, seqs)

    def _release(self, seqs: list[int]) -> tuple[Any, Any]:
        now = int(self._clock() * 1000)
        return self._by_key(update(self.table).values(available_at=now), seqs)

    def _claim_size(self) -> int:
        return self.batch_size * _RELAY_BATCH_FACTOR if self._relaying else self.batch_size

    def _kept_back(
        self, unsent: Unsent | None, rows: Sequence[Row[Any]], done: list[int]
    ) -> list[Row[Any]]:
        """The rows of the messages ``unsent`` names, taken out of ``done``."""
        if unsent is None:
            return []
        kept = [row for row in rows if row.message_id in unsent.message_ids]
        seqs = {row.seq for row in kept}
        done[:] = [seq for seq in done if seq not in seqs]
        log.warning(
            "channel %r: %d message(s) not sent on, kept back for a later try: %s",
            self.name,
            len(kept),
            unsent.error,
        )
        return kept

    def _keep_back(self, rows: Sequence[Row[Any]]) -> tuple[Any, Any]:
        """Make ``rows`` available again later, each after a pause doubled at every try."""
        now = self._clock()
        statement = (
            update(self.table)
            .where(self.table.c.seq == bindparam("key"))
            .values(available_at=bindparam("until"), deliveries=self.table.c.deliveries + 1)
        )
        return statement, [
            {"key": row.seq, "until": int((now + _kept_back_pause(row.deliveries)) * 1000)}
            for row in rows
        ]

    def _ack(self, seqs: list[int]) -> tuple[Any, Any]:
        if self.database.backend == "mysql":
            return self._by_key(delete(self.table), seqs)
        return self._ack_statement, {"seqs": seqs}

    @functools.cached_property
    def _ack_statement(self) -> Any:
        return delete(self.table).where(self.table.c.seq.in_(bindparam("seqs", expanding=True)))

    def _by_key(self, statement: Any, seqs: list[int]) -> tuple[Any, Any]:
        """``statement`` for the rows ``seqs``, and its parameters: ``execute(*...)``."""
        if self.database.backend == "mysql":
            # MariaDB/MySQL may read ``seq IN (...)`` by a scan that locks rows other workers
            # have claimed, and workers deadlock: there, go by the key, one row at a time.
            keyed = statement.where(self.table.c.seq == bindparam("key"))
            return keyed, [{"key": seq} for seq in seqs]
        return statement.where(self.table.c.seq.in_(seqs)), None

    def _delivery(self, row: Row[Any], connection: Any, isolated: bool = True) -> Delivery:
        return Delivery(
            Envelope(bytes(row.body), _decode_headers(row.headers)),
            self.name,
            transaction=connection,
            redelivered=row.deliveries > 0,
            isolated=isolated,
        )

    def consume(self, handle: Handle, max_messages: int, wait: float) -> int:
        take = self._consume_leased if self.mode == "lease" else self._consume_in_transaction
        handled = _once_more_if_stale(take, handle, min(max_messages, self._claim_size()))
        if handled == 0 and wait > 0:
            self._wait(wait)
            handled = _once_more_if_stale(take, handle, min(max_messages, self._claim_size()))
        return handled

    def _consume_in_transaction(self, handle: Handle, limit: int) -> int:
        failures: dict[int, BaseException] = {}
        handed: set[int] = set()
        isolated = not self.redo_batches
        while True:
            try:
                return self._consume_batch(handle, limit, isolated, failures, handed)
            except _HandlerFailed as failed:
                # Everything was rolled back: redo the batch, and deal with the failed
                # message at once instead of running its handler again.
                failures[failed.seq] = failed.error
            except BatchRollback:
                # The batch could not commit as a whole: redo it with a savepoint per handler.
                isolated = True

    def _consume_batch(
        self,
        handle: Handle,
        limit: int,
        isolated: bool,
        failures: dict[int, BaseException],
        handed: set[int],
    ) -> int:
        with self.database.worker_engine.connect() as connection:
            transaction = Transaction(self.database.key, connection)
            with connection.begin():
                steps = self._batch(transaction, limit, isolated, failures, handed)
                handled, unsent = drive(steps, functools.partial(_carry_out, connection, handle))
        return _after_commit(transaction, handled, unsent)

    def _batch(
        self,
        transaction: Transaction,
        limit: int,
        isolated: bool,
        failures: dict[int, BaseException],
        handed: set[int],
    ) -> Generator[_Io, Any, tuple[int, Unsent | None]]:
        """Claim a batch, hand it out and acknowledge it, in the open ``transaction``: the
        I/O is yielded for the sync or asyncio edge to carry out. Returns how many messages
        were handled and the sends the batch could not make."""
        rows = (yield _Execute(*self._claim(limit))).all()
        if not rows:
            _next_due.set((yield _Execute(self._next_due())).scalar())
            return 0, None
        # A lone message has no neighbour to run again: no savepoint needed.
        isolated = isolated and (len(rows) > 1 or bool(handed))
        done: list[int] = []
        token = current_transaction.set(transaction)
        batch = Batch(
            transaction.before_commit,
            redone=bool(handed or failures),
            message_ids=[row.message_id for row in rows],
        )
        batch_token = current_batch.set(batch)
        try:
            for row in rows:
                batch.current = row.message_id
                delivery = self._delivery(row, transaction.connection, isolated)
                delivery.known_failure = failures.get(row.seq)
                delivery.repeated = row.seq in handed
                try:
                    yield _Hand(delivery)
                except MessageReturned:
                    break
                except BatchRollback as rollback:
                    raise _HandlerFailed(row.seq, rollback.__cause__ or rollback) from None
                done.append(row.seq)
                handed.add(row.seq)
            unsent = yield _BeforeAck(batch)
        finally:
            current_batch.reset(batch_token)
            current_transaction.reset(token)
        self._relaying = len(rows) >= self.batch_size and len(batch.forwarded) == len(rows)
        kept = self._kept_back(unsent, rows, done)
        if done:
            yield _Execute(*self._ack(done))
        if kept:
            yield _Execute(*self._keep_back(kept))
        return len(done), unsent

    def _consume_leased(self, handle: Handle, limit: int) -> int:
        engine = self.database.worker_engine
        with engine.begin() as connection:
            rows = connection.execute(*self._claim(limit)).all()
            if rows:
                connection.execute(*self._lease([row.seq for row in rows]))
        done: list[int] = []
        try:
            for row in rows:
                handle(self._delivery(row, None))
                done.append(row.seq)
        except BaseException as error:
            # Give the message in hand and the rest of the batch back to other workers now.
            with engine.begin() as connection:
                connection.execute(*self._release([row.seq for row in rows[len(done) :]]))
            if not isinstance(error, MessageReturned):
                raise
        finally:
            if done:
                with engine.begin() as connection:
                    connection.execute(*self._ack(done))
        return len(done)

    async def aconsume(self, handle: AsyncHandle, max_messages: int, wait: float) -> int:
        take = self._aconsume_leased if self.mode == "lease" else self._aconsume_in_transaction
        handled = await _aonce_more_if_stale(take, handle, min(max_messages, self._claim_size()))
        if handled == 0 and wait > 0:
            await self._await(wait)
            handled = await _aonce_more_if_stale(
                take, handle, min(max_messages, self._claim_size())
            )
        return handled

    async def _aconsume_in_transaction(self, handle: AsyncHandle, limit: int) -> int:
        failures: dict[int, BaseException] = {}
        handed: set[int] = set()
        isolated = not self.redo_batches
        while True:
            try:
                return await self._aconsume_batch(handle, limit, isolated, failures, handed)
            except _HandlerFailed as failed:
                # Everything was rolled back: redo the batch, and deal with the failed
                # message at once instead of running its handler again.
                failures[failed.seq] = failed.error
            except BatchRollback:
                # The batch could not commit as a whole: redo it with a savepoint per handler.
                isolated = True

    async def _aconsume_batch(
        self,
        handle: AsyncHandle,
        limit: int,
        isolated: bool,
        failures: dict[int, BaseException],
        handed: set[int],
    ) -> int:
        async with self.database.worker_async_engine.connect() as connection:
            transaction = Transaction(self.database.key, connection)
            async with connection.begin():
                steps = self._batch(transaction, limit, isolated, failures, handed)
                carry_out = functools.partial(_acarry_out, connection, handle)
                handled, unsent = await adrive(steps, carry_out)
        return _after_commit(transaction, handled, unsent)

    async def _aconsume_leased(self, handle: AsyncHandle, limit: int) -> int:
        engine = self.database.worker_async_engine
        async with engine.begin() as connection:
            rows = (await connection.execute(*self._claim(limit))).all()
            if rows:
                await connection.execute(*self._lease([row.seq for row in rows]))
        done: list[int] = []
        try:
            for row in rows:
                await handle(self._delivery(row, None))
                done.append(row.seq)
        except BaseException as error:
            # Give the message in hand and the rest of the batch back to other workers now.
            async with engine.begin() as connection:
                await connection.execute(*self._release([row.seq for row in rows[len(done) :]]))
            if not isinstance(error, MessageReturned):
                raise
        finally:
            if done:
                async with engine.begin() as connection:
                    await connection.execute(*self._ack(done))
        return len(done)

    # -- waiting ---------------------------------------------------------------------------

    def _next_due(self) -> Any:
        return select(func.min(self.table.c.available_at)).where(self.table.c.channel == self.name)

    def _seconds_until_due(self, limit: float) -> float:
        """How long until the next delayed message is due, at most ``limit``: as an empty
        claim just found it, or asked now."""
        due = _next_due.get()
        _next_due.set(_UNKNOWN)
        if due is _UNKNOWN:
            with self.database.worker_engine.connect() as connection:
                due = connection.execute(self._next_due()).scalar()
        if due is None:
            return limit
        return max(0.0, min(limit, float(due) / 1000 - self._clock()))

    def _wait(self, wait: float) -> None:
        # A message due now but not taken is locked by another worker: wait a moment for it.
        timeout = self._seconds_until_due(wait) or min(wait, _BUSY_PAUSE)
        if self.database.backend == "postgresql":
            self._listen(timeout)
            return
        with self._wakeup:
            self._wakeup.wait(min(timeout, self.poll_interval))

    def _listen(self, timeout: float) -> None:
        import psycopg

        if self._listener is None or self._listener.closed:
            url = self.database.url.set(drivername="postgresql")
            self._listener = psycopg.connect(
                url.render_as_string(hide_password=False), autocommit=True
            )
            self._listener.execute(f"LISTEN {_NOTIFY}")
            return  # a message may have committed before LISTEN: look again at once
        for notify in self._listener.notifies(timeout=timeout):
            if notify.payload == self.name:
                break

    async def _await(self, wait: float) -> None:
        if _next_due.get() is _UNKNOWN:
            timeout = await asyncio.to_thread(self._seconds_until_due, wait)
        else:
            timeout = self._seconds_until_due(wait)
        timeout = timeout or min(wait, _BUSY_PAUSE)
        if self.database.backend == "postgresql":
            await self._alisten(timeout)
        else:
            await asyncio.sleep(min(timeout, self.poll_interval))

    async def _alisten(self, seconds: float) -> None:
        import psycopg

        if self._alistener is None or self._alistener.closed:
            url = self.database.url.set(drivername="postgresql")
            self._alistener = await psycopg.AsyncConnection.connect(
                url.render_as_string(hide_password=False), autocommit=True
            )
            await self._alistener.execute(f"LISTEN {_NOTIFY}")
            return
        async for notify in self._alistener.notifies(timeout=seconds):
            if notify.payload == self.name:
                break

    def interrupt(self) -> None:
        self._wake_local()  # a PostgreSQL listener's wait ends at its timeout

    def _wake_local(self) -> None:
        with self._wakeup:
            self._wakeup.notify_all()

    # -- inspection ------------------------------------------------------------------------

    def depth(self) -> int:
        with self.database.reading() as connection:
            count = connection.execute(
                select(func.count()).where(self.table.c.channel == self.name)
            ).scalar()
        return int(count or 0)

    def oldest_age(self) -> float | None:
        """Seconds since the oldest message due on the channel was first due: how far its
        consumers (an outbox's relay) are behind. Retries kept back do not reset it."""
        now = self._clock()
        with self.database.reading() as connection:
            oldest = connection.execute(
                select(func.min(self.table.c.queued_at)).where(
                    self.table.c.channel == self.name,
                    self.table.c.queued_at <= int(now * 1000),
                )
            ).scalar()
        return None if oldest is None else max(0.0, now - oldest / 1000)

    def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        if self._own_database is not None:
            self._own_database.dispose()

    async def aclose(self) -> None:
        listener, self._alistener = self._alistener, None
        if listener is not None:
            await listener.close()
        if self._own_database is not None:
            await self._own_database.adispose()
        self.close()


def _once_more_if_stale(take: Callable[[Handle, int], int], handle: Handle, limit: int) -> int:
    """``take``, again once if a connection broken since it was pooled failed it."""
    try:
        return take(handle, limit)
    except DBAPIError as error:
        if not error.connection_invalidated:
            raise
        log.info("a pooled database connection was broken (%s); claiming on a new one", error)
        return take(handle, limit)


async def _aonce_more_if_stale(
    take: Callable[[AsyncHandle, int], Awaitable[int]], handle: AsyncHandle, limit: int
) -> int:
    try:
        return await take(handle, limit)
    except DBAPIError as error:
        if not error.connection_invalidated:
            raise
        log.info("a pooled database connection was broken (%s); claiming on a new one", error)
        return await take(handle, limit)


@dataclass(frozen=True, slots=True)
class _Execute:
    """I/O of a batch: run a statement on the batch's connection; its result comes back."""

    statement: Any
    parameters: Any = None


@dataclass(frozen=True, slots=True)
class _Hand:
    """I/O of a batch: hand a delivery to the consumer."""

    delivery: Delivery


@dataclass(frozen=True, slots=True)
class _BeforeAck:
    """I/O of a batch: run its ``before_ack`` callbacks; what they could not send comes back."""

    batch: Batch


_Io = _Execute | _Hand | _BeforeAck


def _carry_out(connection: Connection, handle: Handle, io: _Io) -> Any:
    if isinstance(io, _Execute):
        return connection.execute(io.statement, io.parameters)
    if isinstance(io, _Hand):
        return handle(io.delivery)
    return io.batch.run_before_ack()


async def _acarry_out(connection: AsyncConnection, handle: AsyncHandle, io: _Io) -> Any:
    if isinstance(io, _Execute):
        return await connection.execute(io.statement, io.parameters)
    if isinstance(io, _Hand):
        return await handle(io.delivery)
    return await io.batch.arun_before_ack()


def _after_commit(transaction: Transaction, handled: int, unsent: Unsent | None) -> int:
    for callback in transaction.after_commit:
        callback()
    if unsent is not None:
        raise unsent.error
    return handled


def _kept_back_pause(deliveries: int) -> float:
    return min(_KEPT_BACK_PAUSE * float(2 ** min(deliveries, 16)), _LONGEST_KEPT_BACK_PAUSE)


class _HandlerFailed(Exception):
    def __init__(self, seq: int, error: BaseException) -> None:
        super().__init__(seq)
        self.seq = seq
        self.error = error


def _notify_trigger(table: str) -> list[str]:
    return [
        f"""CREATE OR REPLACE FUNCTION {table}_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('{_NOTIFY}', NEW.channel);
    RETURN NULL;
END $$ LANGUAGE plpgsql""",
        f"""CREATE OR REPLACE TRIGGER {table}_notify AFTER INSERT ON {table}
    FOR EACH ROW EXECUTE FUNCTION {table}_notify()""",
    ]
