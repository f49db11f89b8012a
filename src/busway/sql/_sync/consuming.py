# Generated from src/busway/sql/_async/consuming.py by tools/unasync.py: do not edit.
# Change the asyncio source, then run `make generate`.
"""How a ``SqlChannel`` consumes: a batch claimed, handed out and acknowledged in one
transaction (``transaction`` mode, the batch's steps written once in ``SqlChannel._batch``),
or leased and handed out outside any transaction (``lease`` mode, ``busway.sql.leases``); and
the I/O those steps yield, carried out on a connection."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from busway._internal.steps import drive
from busway.channels.base import Handle, MessageReturned
from busway.sql.batch_io import BeforeAck, Execute, Hand, Io, StaleClaim, after_commit, given_up
from busway.sql.crashes import Aside, InHand, claim_first
from busway.sql.database import Database
from busway.sql.leases import leased, to_lease
from busway.sql.redo import Redo, watch
from busway.sql.transactions import Transaction

if TYPE_CHECKING:
    from busway.sql.channel import SqlChannel

log = logging.getLogger("busway.sql")


def consume(channel: SqlChannel, handle: Handle, max_messages: int, wait: float) -> int:
    """Claim, hand out and acknowledge up to ``max_messages`` of ``channel``, waiting at most
    ``wait`` seconds for one if there is none."""
    take = functools.partial(_consume_in_transaction, channel)
    if channel.mode == "lease":
        take = functools.partial(_consume_leased, channel)
    limit = min(max_messages, channel._claim_size())
    handled = once_more_if_stale(take, handle, limit)
    if handled == 0 and wait > 0:
        channel._wait(wait)
        handled = once_more_if_stale(take, handle, limit)
    return handled


def _consume_in_transaction(channel: SqlChannel, handle: Handle, limit: int) -> int:
    redo = Redo(channel.name, isolated=not channel.redo_batches)
    while True:
        try:
            return _consume_batch(channel, handle, limit, redo)
        except Exception as error:
            pause = redo.after(error)  # everything was rolled back, or this raises
        if pause:
            time.sleep(pause)


def _consume_batch(channel: SqlChannel, handle: Handle, limit: int, redo: Redo) -> int:
    taken: list[int] = []
    watch(channel.database.worker_engine)
    with channel.database.worker_engine.connect() as connection:
        transaction = Transaction(channel.database.key, connection)
        carry = with_asides(channel.database, functools.partial(carry_out, connection, handle))
        with given_back_on_failure(channel.database, channel._in_hand, taken):
            claimed = None
            if channel._claims_first:
                with connection.begin():
                    claimed = drive(claim_first(channel, limit), carry)
                if not claimed:
                    return 0
                taken += claimed
            with connection.begin():
                steps = channel._batch(transaction, limit, redo, claimed, taken)
                handled, unsent = drive(steps, carry)
    return after_commit(transaction, handled, unsent)


def _consume_leased(channel: SqlChannel, handle: Handle, limit: int) -> int:
    sql, engine = channel._sql, channel.database.engine
    with engine.begin() as connection:
        claimed = connection.execute(*sql.claim(limit, channel._clock()))
        rows = to_lease(claimed.all(), channel._max_crashes is not None)
        if rows:
            until = channel._clock() + channel.visibility_timeout
            connection.execute(*sql.lease([row.seq for row in rows], until))
    done: list[int] = []
    try:
        for row in rows:
            handle(leased(channel, row))
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


def carry_out(connection: Connection, handle: Handle, io: Io) -> Any:
    """Carry out one piece of a batch's I/O."""
    if isinstance(io, Execute):
        return connection.execute(io.statement, io.parameters)
    if isinstance(io, Hand):
        return handle(io.delivery)
    assert isinstance(io, BeforeAck)
    return io.batch.run_before_ack()


def once_more_if_stale(take: Callable[[Handle, int], int], handle: Handle, limit: int) -> int:
    """``take``, again once if its claim failed on a broken pooled connection."""
    try:
        return take(handle, limit)
    except StaleClaim as stale:
        log.info("a pooled database connection was broken (%s); claiming on a new one", stale)
        return take(handle, limit)
    except DBAPIError as error:
        if not error.connection_invalidated or given_up(error):
            raise
        log.info("a pooled database connection was broken (%s); claiming on a new one", error)
        return take(handle, limit)


def with_asides(database: Database, carry_out: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``carry_out``, which also carries out ``Aside`` I/O."""

    def carry(io: Any) -> Any:
        if isinstance(io, Aside):
            run_aside(database, io)
            return None
        return carry_out(io)

    return carry


def run_aside(database: Database, io: Aside) -> None:
    """Run ``io`` at once, again once on a new connection if a pooled one was found broken."""
    try:
        _run_aside(database, io)
    except DBAPIError as error:
        if not error.connection_invalidated:
            raise
        _run_aside(database, io)


def _run_aside(database: Database, io: Aside) -> None:
    if database.is_sqlite:
        with database.engine.begin() as connection:
            connection.execute(io.statement, io.parameters)
        return
    with database.worker_engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        connection.execute(io.statement, io.parameters)


@contextmanager
def given_back_on_failure(
    database: Database, in_hand: InHand | None, taken: list[int]
) -> Iterator[None]:
    """If the block fails, its worker alive, count out the deliveries noted in ``taken``:
    the batch rolled back, and no death must be counted for it."""
    try:
        yield
    except BaseException:
        if in_hand is not None and taken:
            try:
                for statement in in_hand.give_back(taken):
                    run_aside(database, Aside(*statement))
            except Exception as error:
                log.warning("could not count out the %d message(s) in hand: %s", len(taken), error)
        raise
