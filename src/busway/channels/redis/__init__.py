"""Redis Streams: messages in a stream, read through a consumer group.

Sending adds a stream entry, headers as JSON in one field and the body in another; a delayed
message waits in a sorted set scored by when it is due, and consuming first moves the due ones
into the stream. A worker reads a batch with XREADGROUP, hands it out, then acknowledges what
was handled; the head of the stream that every group has acknowledged is trimmed before each
read. A message whose handling raised stays pending and this channel hands it out again; the
pending messages of a consumer that died are claimed by another once idle for ``claim_idle``
seconds. Redis keeps streams in memory: messages survive a Redis restart only with
persistence on.

``channel`` holds ``RedisChannel``; ``stream`` the commands it sends and what their replies
mean, free of I/O; ``scripts`` the Lua scripts among them; ``link`` the sync and asyncio
redis-py clients that run them; ``hand`` a batch read and handed out, and what of it to
acknowledge; ``deferred`` the sends a batch makes, sent together before its acknowledgement,
each failure kept back with its own message only.
"""

from busway.errors import extra_required

with extra_required("the Redis Streams channel (busway.redis)", "redis"):
    import redis.asyncio  # noqa: F401 - before the modules below, which take redis-py for granted

from busway.channels.redis.channel import RedisChannel

__all__ = ["RedisChannel"]
