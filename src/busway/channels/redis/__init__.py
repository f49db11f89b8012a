"""Redis Streams: messages in a stream, read through a consumer group.

Sending adds a stream entry, headers as JSON in one field and the body in another; a delayed
message waits in a sorted set scored by when it is due, and consuming first moves the due ones
into the stream. A worker reads a batch with XREADGROUP, hands it out, then acknowledges what
was handled; the head of the stream that every group has acknowledged is trimmed before each
read. A message whose handling raised stays pending and this channel hands it out again; the
pending messages of a consumer that died are claimed by another once idle for ``claim_idle``
seconds. Redis keeps streams in memory: messages survive a Redis restart only with
persistence on.

The modules, under the same names for the same concepts in every broker package:

- ``channel``: the channel, ``RedisChannel``.
- ``link``: the connection edge: the sync and asyncio redis-py clients, and the commands run
  on them (``clients``, and ``commands`` in ``_async/``).
- ``wire``: a message on the wire: busway's headers as JSON in one field of a stream entry,
  the body in another.
- ``deferred``: a batch's sends, deferred until before its acknowledgement: commands sent
  together then, in one pipeline.
- ``hand``: a batch in hand: entries read and handed out one at a time, and what of them to
  acknowledge.
- ``consuming``: how the channel consumes, in ``_async/``.

Redis's own: ``stream`` the commands the channel sends and what their replies mean, free of
I/O; ``scripts`` the Lua scripts among them. ``_async/`` holds the code with I/O, written for
asyncio; ``_sync/`` is generated from it by ``tools/unasync.py``.

``busway.channels.redis`` is internal: the one public import path is
``busway.redis.RedisChannel``.
"""

from busway.errors import extra_required

with extra_required("the Redis Streams channel (busway.redis)", "redis"):
    import redis.asyncio  # noqa: F401 - before the modules below, which take redis-py for granted

from busway.channels.redis.channel import RedisChannel

__all__ = ["RedisChannel"]
