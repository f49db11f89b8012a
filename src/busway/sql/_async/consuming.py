"""How a ``SqlChannel`` consumes: a batch claimed, handed out and acknowledged in one
transaction (``transaction`` mode, ``_abatch``), redone in a new one when the database ends
it (``busway.sql.redo``); or leased and handed out outside any transaction (``lease`` mode,
the decisions in ``busway.sql.leases``)."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from busway.channels.base import (
    AsyncHandle,
    Batch,
    BatchRollback,
    MessageReturned,
    Unsent,
    current_batch,
)
from busway.sql.batch_io import HandlerFailed, StaleClaim, after_commit, given_up, kept_back
from busway.sql.consumer import SqlConsumer
from busway.sql.crashes import InHand, crashes_of, in_turn
from busway.sql.database import Database
from busway.sql.leases import leased, to_lease
from busway.sql.redo import Redo, begin_watch, check_alive, watch
from busway.sql.runs import with_runs
from busway.sql.statements import PLANNED, UNPLANNED
from busway.sql.transactions import Transaction, current_transaction
from busway.sql.waiting import next_due

if TYPE_CHECKING:
    pass

log = logging.getLogger("busway.sql")

HELD_BACK_UNTIL_EMPTY = 0.1
"""The longest a consumer of a run until empty, held back (``SqlConsumer.held_back``), waits
before it claims again."""


async def aconsume(
    consumer: SqlConsumer, handle: AsyncHandle, max_messages: int, wait: float
) -> int:
    """Claim, hand out and acknowledge up to ``max_messages`` of the channel, waiting at most
    ``wait`` seconds for one if there is none."""
    take = functools.partial(_aconsume_in_transaction, consumer)
    if consumer.mode == "lease":
        take = functools.partial(_aconsume_leased, consumer)
    limit = min(max_messages, consumer.claim_size())
    if wait == 0 and consumer.held_back():
        # A run until empty waits in the worker for the others' batches, not here; held
        # back, wait a moment anyway, as a consumer with a wait would.
        await consumer.await_idle(HELD_BACK_UNTIL_EMPTY, consumer.busy_pause())
    handled = await aonce_more_if_stale(take, handle, limit)
    if handled == 0 and wait > 0:
        await consumer.await_idle(wait, consumer.busy_pause())
        handled = await aonce_more_if_stale(take, handle, limit)
    return handled


async def _aconsume_in_transaction(consumer: SqlConsumer, handle: AsyncHandle, limit: int) -> int:
    redo = Redo(consumer.name, isolated=not consumer.redo_batches)
    while True:
        try:
            return await _aconsume_batch(consumer, handle, limit, redo)
        except Exception as error:
            pause = redo.after(error)  # everything was rolled back, or this raises
        if pause:
            await asyncio.sleep(pause)


async def _aconsume_batch(
    consumer: SqlConsumer, handle: AsyncHandle, limit: int, redo: Redo
) -> int:
    taken: list[int] = []
    database = consumer.database
    watch(database.worker_async_engine.sync_engine)
    async with consumer.aturn(), database.worker_async_engine.connect() as connection:
        transaction = Transaction(database.key, connection)
        async with agiven_back_on_failure(database, consumer.in_hand, taken):
            claimed = None
            if consumer.claims_first:
                async with connection.begin():
                    claimed = await _aclaim_first(consumer, connection, limit)
                if not claimed:
                    return 0
                taken += claimed
            async with connection.begin():
                handled, unsent = await _abatch(
                    consumer, transaction, handle, limit, redo, claimed, taken
                )
    return after_commit(transaction, handled, unsent)


async def _abatch(
    consumer: SqlConsumer,
    transaction: Transaction,
    handle: AsyncHandle,
    limit: int,
    redo: Redo,
    claimed: list[int] | None,
    taken: list[int],
) -> tuple[int, Unsent | None]:
    """Claim a batch, hand it out and acknowledge it, in the open ``transaction``. Returns
    how many messages were handled and the sends the batch could not make. ``claimed``: the
    rows a short transaction claimed and noted in hand first (SQLite); ``taken`` gets the rows
    noted."""
    connection = transaction.connection
    assert isinstance(connection, AsyncConnection)
    rows = await _aclaim_batch(consumer, connection, limit, claimed, taken)
    if not rows:
        await _anothing_claimed(consumer, connection)
        return 0, None
    consumer.claimed()
    redo.claimed = True
    begin_watch(connection)
    failures, handed = redo.failures, redo.handed
    # A lone message has no neighbour to run again: no savepoint needed.
    isolated = redo.isolated and (len(rows) > 1 or bool(handed))
    guarded = consumer.in_hand is not None
    done: list[int] = []
    token = current_transaction.set(transaction)
    batch = Batch(
        transaction.before_commit,
        redone=bool(handed or failures),
        message_ids=[row.message_id for row in rows],
    )
    batch_token = current_batch.set(batch)
    stopped: set[str] = set()
    try:
        for row in rows:
            if row.ordering_key in stopped:
                continue  # after one of its key that did not go through: a later batch's
            batch.current = row.seq
            delivery = consumer.delivery(
                row,
                connection,
                isolated,
                repeated=row.seq in handed,
                known_failure=failures.get(row.seq),
                crashes=row.crashes if guarded else 0,
            )
            try:
                await handle(delivery)
            except MessageReturned:
                break
            except BatchRollback as rollback:
                raise HandlerFailed(row.seq, rollback.__cause__ or rollback) from None
            handed.add(row.seq)
            check_alive(connection)
            done.append(row.seq)
            if row.ordering_key is not None and (
                row.seq in batch.forwarded
                or (consumer.name, row.ordering_key) in transaction.held_keys
            ):
                stopped.add(row.ordering_key)
        unsent = await batch.arun_before_ack()
    finally:
        current_batch.reset(batch_token)
        current_transaction.reset(token)
    consumer.relaying = len(rows) >= consumer.batch_size and len(batch.forwarded) == len(rows)
    check_alive(connection)
    kept = kept_back(consumer.name, unsent, rows, done)
    await _aacknowledge(consumer, connection, done, taken)
    if kept:
        await connection.execute(*consumer.sql.keep_back(kept, consumer.clock()))
    return len(done), unsent


async def _aclaim_batch(
    consumer: SqlConsumer,
    connection: AsyncConnection,
    limit: int,
    claimed: list[int] | None,
    taken: list[int],
) -> list[Row[Any]]:
    """The rows of ``consumer``'s batch; with the crash-loop guard, noted in hand outside the
    batch's transaction before they are handed out (``taken`` gets them), and with their count
    of deaths. ``claimed``: the rows ``_aclaim_first`` claimed and noted (SQLite)."""
    in_hand = consumer.in_hand
    try:
        if claimed is not None:
            assert in_hand is not None
            again: Any = await connection.execute(in_hand.claimed_again, {"seqs": claimed})
            return list(again.all())
        found = await _aclaim(consumer, connection, limit)
        if in_hand is None:
            return found
    except DBAPIError as error:
        if error.connection_invalidated:
            raise StaleClaim(error) from error
        raise
    rows = in_turn(found, crashes_of)
    if rows:
        seqs = [row.seq for row in rows]
        await arun_aside(consumer.database, *in_hand.take(seqs))
        taken += seqs
    return rows


async def _aclaim(
    consumer: SqlConsumer, connection: AsyncConnection, limit: int, restore: bool = True
) -> list[Row[Any]]:
    """The rows of a claim of up to ``limit`` messages; on PostgreSQL planned by the dequeue
    index (``busway.sql.statements.PLANNED``) when the consumer says so, then, if
    ``restore``, the planner set back as it was for the rest of the transaction."""
    bound = None
    if consumer.database.backend == "mysql" and consumer.windowed():
        bound = (await connection.execute(*consumer.sql.window_bound(consumer.clock()))).first()
    if consumer.database.backend != "postgresql":
        return await _awith_runs(consumer, connection, limit, bound)
    if not consumer.plans_claims():
        started = time.perf_counter()
        rows = await _awith_runs(consumer, connection, limit)
        consumer.claim_took(time.perf_counter() - started)
        return rows
    sort, jit, *_ = (await connection.execute(PLANNED)).one()
    rows = await _awith_runs(consumer, connection, limit)
    if restore:
        await connection.execute(UNPLANNED, {"sort": sort, "jit": jit})
    return rows


async def _awith_runs(
    consumer: SqlConsumer, connection: AsyncConnection, limit: int, bound: Any = None
) -> list[Row[Any]]:
    """The rows of a claim of up to ``limit`` messages, with runs of their keys when the
    consumer takes runs (``busway.sql.runs``)."""
    if not consumer.takes_runs():
        claim = consumer.claim(consumer.heads_limit(limit), bound)
        return list((await connection.execute(*claim)).all())
    heads = list(
        (await connection.execute(*consumer.claim(consumer.heads_limit(limit), bound))).all()
    )
    keys = sorted({row.ordering_key for row in heads if row.ordering_key is not None})
    if not keys:
        return heads
    followers = (await connection.execute(*consumer.followers.query(keys))).all()
    return with_runs(heads, followers, limit, int(consumer.clock() * 1000))


async def _aclaim_first(
    consumer: SqlConsumer, connection: AsyncConnection, limit: int
) -> list[int]:
    """Claim a batch and note it in hand, in a transaction of its own; the rows noted."""
    in_hand = consumer.in_hand
    assert in_hand is not None
    result = await connection.execute(*consumer.claim(limit))
    rows = in_turn(result.all(), crashes_of)
    if not rows:
        await _anothing_claimed(consumer, connection)
        return []
    consumer.claimed()
    seqs = [row.seq for row in rows]
    await connection.execute(*in_hand.take(seqs))
    return seqs


async def _anothing_claimed(consumer: SqlConsumer, connection: AsyncConnection) -> None:
    """After a claim that found nothing: note when the channel's next message is due, for
    the wait, and tell the consumer (it may claim by keys for a while)."""
    found = (await connection.execute(consumer.sql.next_due())).scalar()
    next_due.set((consumer.name, found))
    consumer.found_nothing(found)


async def _aacknowledge(
    consumer: SqlConsumer, connection: AsyncConnection, done: list[int], taken: list[int]
) -> None:
    """Delete the messages ``done`` (and their notes); count out the other ones taken."""
    in_hand = consumer.in_hand
    if in_hand is None:
        if done:
            await connection.execute(*consumer.sql.ack(done))
        return
    if done:
        for statement in in_hand.acknowledge(done):
            await connection.execute(*statement)
    finished = set(done)
    left = [seq for seq in taken if seq not in finished]
    for statement in in_hand.give_back(left) if left else ():
        await connection.execute(*statement)


async def _aconsume_leased(consumer: SqlConsumer, handle: AsyncHandle, limit: int) -> int:
    sql, engine = consumer.sql, consumer.database.async_engine
    async with engine.begin() as connection:
        found = await _aclaim(consumer, connection, limit, restore=False)
        rows = to_lease(found, consumer.guarded)
        if rows:
            consumer.claimed()
            until = consumer.clock() + consumer.visibility_timeout
            await connection.execute(*sql.lease([row.seq for row in rows], until))
        else:
            await _anothing_claimed(consumer, connection)
    done: list[int] = []
    try:
        for row in rows:
            await handle(leased(consumer, row))
            done.append(row.seq)
    except BaseException as error:
        # Give the message in hand and the rest of the batch back to other workers now.
        async with engine.begin() as connection:
            rest = [row.seq for row in rows[len(done) :]]
            await connection.execute(*sql.release(rest, consumer.clock()))
        if not isinstance(error, MessageReturned):
            raise
    finally:
        if done:
            async with engine.begin() as connection:
                await connection.execute(*sql.ack(done))
    return len(done)


async def aonce_more_if_stale(
    take: Callable[[AsyncHandle, int], Awaitable[int]], handle: AsyncHandle, limit: int
) -> int:
    """``take``, again once if its claim failed on a broken pooled connection."""
    try:
        return await take(handle, limit)
    except StaleClaim as stale:
        log.info("a pooled database connection was broken (%s); claiming on a new one", stale)
        return await take(handle, limit)
    except DBAPIError as error:
        if not error.connection_invalidated or given_up(error):
            raise
        log.info("a pooled database connection was broken (%s); claiming on a new one", error)
        return await take(handle, limit)


async def arun_aside(database: Database, statement: Any, parameters: Any = None) -> None:
    """Run ``statement`` at once, on a connection of its own and committed at once, outside
    the batch's transaction; again once on a new connection if a pooled one was broken."""
    try:
        await _arun_aside(database, statement, parameters)
    except DBAPIError as error:
        if not error.connection_invalidated:
            raise
        await _arun_aside(database, statement, parameters)


async def _arun_aside(database: Database, statement: Any, parameters: Any) -> None:
    if database.is_sqlite:
        async with database.async_engine.begin() as connection:
            await connection.execute(statement, parameters)
        return
    async with database.worker_async_engine.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        await connection.execute(statement, parameters)


@asynccontextmanager
async def agiven_back_on_failure(
    database: Database, in_hand: InHand | None, taken: list[int]
) -> AsyncIterator[None]:
    """If the block fails, its worker alive, count out the deliveries noted in ``taken``:
    the batch rolled back, and no death must be counted for it."""
    try:
        yield
    except BaseException:
        if in_hand is not None and taken:
            try:
                for statement in in_hand.give_back(taken):
                    await arun_aside(database, *statement)
            except Exception as error:
                log.warning("could not count out the %d message(s) in hand: %s", len(taken), error)
        raise
