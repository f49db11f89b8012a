"""How a ``SqlChannel`` consumes: a batch claimed, handed out and acknowledged in one
transaction (``transaction`` mode, the batch's steps written once in ``SqlChannel._batch``),
or leased and handed out outside any transaction (``lease`` mode, ``busway.sql.leases``); and
the I/O those steps yield, carried out on a connection."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from busway._internal.steps import adrive
from busway.channels.base import AsyncHandle, MessageReturned
from busway.sql.batch_io import BeforeAck, Execute, Hand, Io, StaleClaim, after_commit, given_up
from busway.sql.crashes import Aside, InHand, claim_first
from busway.sql.database import Database
from busway.sql.leases import leased, to_lease
from busway.sql.redo import Redo, watch
from busway.sql.transactions import Transaction

if TYPE_CHECKING:
    from busway.sql.channel import SqlChannel

log = logging.getLogger("busway.sql")


async def aconsume(channel: SqlChannel, handle: AsyncHandle, max_messages: int, wait: float) -> int:
    """Claim, hand out and acknowledge up to ``max_messages`` of ``channel``, waiting at most
    ``wait`` seconds for one if there is none."""
    take = functools.partial(_aconsume_in_transaction, channel)
    if channel.mode == "lease":
        take = functools.partial(_aconsume_leased, channel)
    limit = min(max_messages, channel._claim_size())
    handled = await aonce_more_if_stale(take, handle, limit)
    if handled == 0 and wait > 0:
        await channel._await(wait)
        handled = await aonce_more_if_stale(take, handle, limit)
    return handled


async def _aconsume_in_transaction(channel: SqlChannel, handle: AsyncHandle, limit: int) -> int:
    redo = Redo(channel.name, isolated=not channel.redo_batches)
    while True:
        try:
            return await _aconsume_batch(channel, handle, limit, redo)
        except Exception as error:
            pause = redo.after(error)  # everything was rolled back, or this raises
        if pause:
            await asyncio.sleep(pause)


async def _aconsume_batch(channel: SqlChannel, handle: AsyncHandle, limit: int, redo: Redo) -> int:
    taken: list[int] = []
    watch(channel.database.worker_async_engine.sync_engine)
    async with channel.database.worker_async_engine.connect() as connection:
        transaction = Transaction(channel.database.key, connection)
        carry = awith_asides(channel.database, functools.partial(acarry_out, connection, handle))
        async with agiven_back_on_failure(channel.database, channel._in_hand, taken):
            claimed = None
            if channel._claims_first:
                async with connection.begin():
                    claimed = await adrive(claim_first(channel, limit), carry)
                if not claimed:
                    return 0
                taken += claimed
            async with connection.begin():
                steps = channel._batch(transaction, limit, redo, claimed, taken)
                handled, unsent = await adrive(steps, carry)
    return after_commit(transaction, handled, unsent)


async def _aconsume_leased(channel: SqlChannel, handle: AsyncHandle, limit: int) -> int:
    sql, engine = channel._sql, channel.database.async_engine
    async with engine.begin() as connection:
        claimed = await connection.execute(*sql.claim(limit, channel._clock()))
        rows = to_lease(claimed.all(), channel._max_crashes is not None)
        if rows:
            until = channel._clock() + channel.visibility_timeout
            await connection.execute(*sql.lease([row.seq for row in rows], until))
    done: list[int] = []
    try:
        for row in rows:
            await handle(leased(channel, row))
            done.append(row.seq)
    except BaseException as error:
        # Give the message in hand and the rest of the batch back to other workers now.
        async with engine.begin() as connection:
            rest = [row.seq for row in rows[len(done) :]]
            await connection.execute(*sql.release(rest, channel._clock()))
        if not isinstance(error, MessageReturned):
            raise
    finally:
        if done:
            async with engine.begin() as connection:
                await connection.execute(*sql.ack(done))
    return len(done)


async def acarry_out(connection: AsyncConnection, handle: AsyncHandle, io: Io) -> Any:
    """Carry out one piece of a batch's I/O."""
    if isinstance(io, Execute):
        return await connection.execute(io.statement, io.parameters)
    if isinstance(io, Hand):
        return await handle(io.delivery)
    assert isinstance(io, BeforeAck)
    return await io.batch.arun_before_ack()


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


def awith_asides(
    database: Database, carry_out: Callable[[Any], Awaitable[Any]]
) -> Callable[[Any], Awaitable[Any]]:
    """``carry_out``, which also carries out ``Aside`` I/O."""

    async def carry(io: Any) -> Any:
        if isinstance(io, Aside):
            await arun_aside(database, io)
            return None
        return await carry_out(io)

    return carry


async def arun_aside(database: Database, io: Aside) -> None:
    """Run ``io`` at once, again once on a new connection if a pooled one was found broken."""
    try:
        await _arun_aside(database, io)
    except DBAPIError as error:
        if not error.connection_invalidated:
            raise
        await _arun_aside(database, io)


async def _arun_aside(database: Database, io: Aside) -> None:
    if database.is_sqlite:
        async with database.async_engine.begin() as connection:
            await connection.execute(io.statement, io.parameters)
        return
    async with database.worker_async_engine.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        await connection.execute(io.statement, io.parameters)


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
                    await arun_aside(database, Aside(*statement))
            except Exception as error:
                log.warning("could not count out the %d message(s) in hand: %s", len(taken), error)
        raise
