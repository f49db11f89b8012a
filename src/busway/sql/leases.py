"""``SqlChannel``'s ``lease`` mode: a batch is claimed and marked taken for
``visibility_timeout`` seconds in a transaction committed at once, and handed out outside
any transaction; a claim left by a dead worker becomes available again when its lease runs
out. A lease's count, ``deliveries``, given back with a released lease, is the count of the
deaths of workers with the message in hand: a message leased before is leased alone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row

from busway.channels.base import AsyncHandle, Delivery, Handle, MessageReturned
from busway.sql.crashes import in_turn

if TYPE_CHECKING:
    from busway.sql.channel import SqlChannel


def consume_leased(channel: SqlChannel, handle: Handle, limit: int) -> int:
    sql, engine = channel._sql, channel.database.engine
    with engine.begin() as connection:
        rows = _in_turn(channel, connection.execute(*sql.claim(limit, channel._clock())).all())
        if rows:
            until = channel._clock() + channel.visibility_timeout
            connection.execute(*sql.lease([row.seq for row in rows], until))
    done: list[int] = []
    try:
        for row in rows:
            handle(_delivery(channel, row))
            done.append(row.seq)
    except BaseException as error:
        # Give the message in hand and the rest of the batch back to other workers now.
        with engine.begin() as connection:
            rest = [row.seq for row in rows[len(done) :]]
            connection.execute(*sql.release(rest, channel._clock()))
        if not isinstance(error, MessageReturned):
            raise
    finally:
        if done:
            with engine.begin() as connection:
                connection.execute(*sql.ack(done))
    return len(done)


async def aconsume_leased(channel: SqlChannel, handle: AsyncHandle, limit: int) -> int:
    sql, engine = channel._sql, channel.database.async_engine
    async with engine.begin() as connection:
        rows = _in_turn(
            channel, (await connection.execute(*sql.claim(limit, channel._clock()))).all()
        )
        if rows:
            until = channel._clock() + channel.visibility_timeout
            await connection.execute(*sql.lease([row.seq for row in rows], until))
    done: list[int] = []
    try:
        for row in rows:
            await handle(_delivery(channel, row))
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


def _in_turn(channel: SqlChannel, rows: Sequence[Row[Any]]) -> list[Row[Any]]:
    """The rows to lease now: with the crash-loop guard, a row leased before alone."""
    if channel._max_crashes is None:
        return list(rows)
    return in_turn(rows, _deaths)


def _deaths(row: Row[Any]) -> int:
    return int(row.deliveries)


def _delivery(channel: SqlChannel, row: Row[Any]) -> Delivery:
    delivery = channel._delivery(row, None)
    delivery.crashes = row.deliveries if channel._max_crashes is not None else 0
    return delivery
