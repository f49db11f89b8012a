# Generated from src/busway/channels/redis/_async/consuming.py by tools/unasync.py: do not edit.
# Change the asyncio source, then run `make generate`.
"""How a Redis channel consumes: entries held back from an earlier batch first, then those
other consumers left pending too long, then due delayed ones and new ones, waiting at most
``wait`` seconds; each batch handed out, then acknowledged or held for a later delivery."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from busway.channels.base import Handle, MessageReturned, current_batch
from busway.channels.redis.hand import Hand
from busway.channels.redis.stream import Entry

if TYPE_CHECKING:
    from busway.channels.redis.channel import RedisChannel


def consume(channel: RedisChannel, handle: Handle, max_messages: int, wait: float) -> int:
    limit = min(max_messages, channel.batch_size)
    if limit < 1:
        return 0
    link, stream = channel._link, channel._stream
    entries = stream.take_held(limit)
    if entries:
        link.call(stream.touch(entries))  # held a while: not for others to claim
    else:
        entries = _fetch(channel, limit, wait)
    return _hand_out(channel, handle, entries) if entries else 0


def _fetch(channel: RedisChannel, limit: int, wait: float) -> list[Entry]:
    call, stream = channel._link.call, channel._stream
    deadline = time.monotonic() + wait
    while True:
        if stream.claim_due():
            claimed = stream.claimed(*call(stream.claim(limit)))
            if claimed:
                return claimed
        now = channel._clock()
        entries, pause = stream.fetched(call(*stream.fetch(now, limit)), now)
        remaining = deadline - time.monotonic()
        if entries or remaining <= 0:
            return entries
        (reply,) = call(stream.read(limit, min(remaining, pause)))
        entries = stream.read_reply(reply)
        if entries or time.monotonic() >= deadline:
            return entries


def _hand_out(channel: RedisChannel, handle: Handle, entries: list[Entry]) -> int:
    link, stream = channel._link, channel._stream
    hand = Hand(channel.name, stream, entries)
    token = current_batch.set(hand.batch)
    try:
        for delivery in hand:
            if hand.slow():  # keep the batch here until acknowledged
                link.call(stream.touch(entries))
            try:
                handle(delivery)
            except MessageReturned:
                break
            except BaseException as error:
                hand.failure = error
                break
            hand.handled += 1
        hand.before_ack()
    except BaseException:
        hand.give_back()
        raise
    finally:
        current_batch.reset(token)
    done = hand.settle()
    if done:
        link.execute(stream.acknowledge(done))
    if hand.kept and stream.counting:
        link.call(*stream.keep_count(hand.kept))
    hand.raise_failure()
    return len(done)
