"""``SqlChannel``'s ``lease`` mode: a batch is claimed and marked taken for
``visibility_timeout`` seconds in a transaction committed at once, and handed out outside
any transaction; a claim left by a dead worker becomes available again when its lease runs
out."""

from __future__ import annotations

from typing import TYPE_CHECKING

from busway.channels.base import AsyncHandle, Handle, MessageReturned

if TYPE_CHECKING:
    from busway.sql.channel import SqlChannel


def consume_leased(channel: SqlChannel, handle: Handle, limit: int) -> int:
    sql, engine = channel._sql, channel.database.engine
    with engine.begin() as connection:
        rows = connection.execute(*sql.claim(limit, channel._clock())).all()
        if rows:
            until = channel._clock() + channel.visibility_timeout
            connection.execute(*sql.lease([row.seq for row in rows], until))
    done: list[int] = []
    try:
        for row in rows:
            handle(channel._delivery(row, None))
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
        rows = (await connection.execute(*sql.claim(limit, channel._clock()))).all()
        if rows:
            until = channel._clock() + channel.visibility_timeout
            await connection.execute(*sql.lease([row.seq for row in rows], until))
    done: list[int] = []
    try:
        for row in rows:
            await handle(channel._delivery(row, None))
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
