# Generated from src/busway/channels/redis/_async/consuming.py by tools/unasync.py: do not edit.
# Change the asyncio source, then run `make generate`.
"""How a Redis channel consumes: entries held back from an earlier batch first, then those
other consumers left pending too long, then due delayed ones and new ones, waiting at most
``wait`` seconds; each batch handed out, then acknowledged or held for a later delivery."""

from __future__ import annotations

import time

from busway.channels.base import Handle, MessageReturned, current_batch
from busway.channels.redis.consumer import RedisConsumer
from busway.channels.redis.hand import Hand
from busway.channels.redis.stream import Entry


def consume(consumer: RedisConsumer, handle: Handle, max_messages: int, wait: float) -> int:
    limit = min(max_messages, consumer.batch_size)
    if limit < 1:
        return 0
    link, stream = consumer.link, consumer.stream
    entries = stream.take_held(limit)
    if entries:
        link.call(stream.touch(entries))  # held a while: not for others to claim
    else:
        entries = _fetch(consumer, limit, wait)
    return _hand_out(consumer, handle, entries) if entries else 0


def _fetch(consumer: RedisConsumer, limit: int, wait: float) -> list[Entry]:
    call, stream = consumer.link.call, consumer.stream
    deadline = time.monotonic() + wait
    while True:
        if stream.claim_due():
            claimed = stream.claimed(*call(stream.claim(limit)))
            if claimed:
                return claimed
        now = consumer.clock()
        entries, pause = stream.fetched(call(*stream.fetch(now, limit)), now)
        remaining = deadline - time.monotonic()
        if entries or remaining <= 0:
            return entries
        (reply,) = call(stream.read(limit, min(remaining, pause)))
        entries = stream.read_reply(reply)
        if entries or time.monotonic() >= deadline:
            return entries


def _hand_out(consumer: RedisConsumer, handle: Handle, entries: list[Entry]) -> int:
    link, stream = consumer.link, consumer.stream
    hand = Hand(consumer.name, stream, entries)
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
        hand.unsent = hand.batch.run_before_ack()
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
