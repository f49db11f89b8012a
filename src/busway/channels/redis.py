"""``RedisChannel``: messages in a Redis stream, read through a consumer group.

Sending adds a stream entry, headers as JSON in one field and the body in another; a delayed
message waits in a sorted set scored by when it is due, and consuming first moves the due ones
into the stream. A worker reads a batch with XREADGROUP, hands it out, then acknowledges what
was handled; the head of the stream that every group has acknowledged is trimmed before each
read. A message whose handling raised stays pending and this channel hands it out again; the
pending messages of a consumer that died are claimed by another once idle for ``claim_idle``
seconds.

Redis keeps streams in memory: messages survive a Redis restart only with persistence on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from busway.channels.base import (
    AsyncHandle,
    Batch,
    Channel,
    ChannelContext,
    Delivery,
    Envelope,
    Handle,
    MessageReturned,
    current_batch,
)
from busway.errors import ConversionError, MissingExtraError

try:
    import redis
    import redis.asyncio
    import redis.asyncio.retry
    import redis.retry
    from redis.backoff import ExponentialWithJitterBackoff
except ModuleNotFoundError as error:  # pragma: no cover - depends on the installed extras
    if (error.name or "redis").split(".")[0] != "redis":
        raise
    raise MissingExtraError("the Redis Streams channel (busway.redis)", "redis") from error

Command = tuple[Any, ...]
Entry = tuple[bytes, bytes, bytes, bool]
"""A stream entry read: its id, headers as JSON, body, and whether it was handed out before."""

log = logging.getLogger("busway.redis")

_encode = msgspec.json.Encoder().encode
_decode_headers = msgspec.json.Decoder(dict[str, Any]).decode

# Lua helpers. Every script gets KEYS = {stream, delayed set} and ARGV[1] = the group.
# ``oldest``: the oldest entry a group has not acknowledged: its oldest pending entry, else
# the first after the last one it was given (or the id after that, still to come).
_GROUPS = """
local function groups(stream)
  local found = {}
  if redis.call('EXISTS', stream) == 0 then return found end
  for _, fields in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local named = {}
    for i = 1, #fields, 2 do named[fields[i]] = fields[i + 1] end
    found[named['name']] = named
  end
  return found
end
local function split(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function oldest(stream, name, group)
  local pending = redis.call('XPENDING', stream, name)
  if pending[2] then return pending[2] end
  local last = group['last-delivered-id']
  local after = redis.call('XRANGE', stream, '(' .. last, '+', 'COUNT', 1)[1]
  if after then return after[1] end
  local ms, seq = split(last)
  return string.format('%.0f-%.0f', ms, seq + 1)
end
"""

# Before a read: drop the head of the stream that every group has acknowledged, move the
# due delayed messages in, and tell when the next one is due. A delayed member is
# "<unique>\n<headers JSON>\n<body>": JSON text never holds a raw newline.
_PREPARE = (
    _GROUPS
    + """
local keep, keep_ms, keep_seq
for name, group in pairs(groups(KEYS[1])) do
  local id = oldest(KEYS[1], name, group)
  local ms, seq = split(id)
  if not keep or ms < keep_ms or (ms == keep_ms and seq < keep_seq) then
    keep, keep_ms, keep_seq = id, ms, seq
  end
end
if keep then redis.call('XTRIM', KEYS[1], 'MINID', keep) end
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'LIMIT', 0, 1000)
for _, member in ipairs(due) do
  local a = string.find(member, '\\n', 1, true)
  local b = string.find(member, '\\n', a + 1, true)
  redis.call('XADD', KEYS[1], '*', 'headers', string.sub(member, a + 1, b - 1),
             'body', string.sub(member, b + 1))
end
if #due > 0 then redis.call('ZREM', KEYS[2], unpack(due)) end
return redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')[2] or false
"""
)

# Messages the group has not handled yet (not acknowledged: lag + pending), and delayed.
_DEPTH = (
    _GROUPS
    + """
local delayed = redis.call('ZCARD', KEYS[2])
local group = groups(KEYS[1])[ARGV[1]]
if not group or not group['lag'] then
  return redis.call('XLEN', KEYS[1]) + delayed  -- no group yet, or its lag is unknown
end
return group['lag'] + group['pending'] + delayed
"""
)

# The id of the oldest message the group has not handled yet, and the earliest delayed
# time, if any.
_HEADS = (
    _GROUPS
    + """
local group, head = groups(KEYS[1])[ARGV[1]], nil
if group then
  head = oldest(KEYS[1], ARGV[1], group)
  if not redis.call('XRANGE', KEYS[1], head, head)[1] then head = nil end
else
  local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
  head = first and first[1]
end
return {head or false, redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')[2] or false}
"""
)

# At close: forget this consumer, unless it still has pending entries (they would be lost).
_RETIRE = """
local pending = redis.pcall('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if pending.err or #pending > 0 then return 0 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
"""

_LAST_CURSOR = b"0-0"


class _Stream:
    """What the sync and asyncio edges share: the keys, the commands, what replies mean,
    and the entries held back for a later delivery."""

    def __init__(self, stream: str, group: str, consumer: str, claim_idle: float) -> None:
        self.stream = stream
        self.delayed = f"{stream}:delayed"
        self.group = group
        self.consumer = consumer
        self.claim_idle = claim_idle
        self.reading = False
        self._next_claim = 0.0
        self._cursor = _LAST_CURSOR
        self._held: deque[Entry] = deque()
        self._held_ids: set[bytes] = set()
        self._lock = threading.Lock()

    # -- commands --------------------------------------------------------------------------

    def create_group(self) -> Command:
        # From the start: messages sent before the group existed are delivered too.
        return ("XGROUP", "CREATE", self.stream, self.group, "0", "MKSTREAM")

    def send(self, envelope: Envelope, now: float) -> Command:
        try:
            headers = _encode(envelope.headers)
        except TypeError as error:
            raise ConversionError(
                f"a header of a message for stream {self.stream!r} is not JSON: {error}; "
                "header values must be str, int, float, bool or None"
            ) from error
        deliver_at = envelope.deliver_at
        if deliver_at is not None and deliver_at > now:
            member = secrets.token_hex(8).encode() + b"\n" + headers + b"\n" + envelope.body
            return ("ZADD", self.delayed, repr(deliver_at), member)
        return ("XADD", self.stream, "*", "headers", headers, "body", envelope.body)

    def claim_due(self) -> bool:
        """Whether to look for entries other consumers left idle (every ``claim_idle / 2``)."""
        return time.monotonic() >= self._next_claim

    def claim(self, limit: int) -> Command:
        idle = int(self.claim_idle * 1000)
        return (
            "XAUTOCLAIM", self.stream, self.group, self.consumer, idle, self._cursor,
            "COUNT", limit,
        )  # fmt: skip

    def fetch(self, now: float, limit: int) -> list[Command]:
        self.reading = True
        return [self._script(_PREPARE, repr(now)), self.read(limit)]

    def read(self, limit: int, block: float | None = None) -> Command:
        # At least a millisecond: BLOCK 0 would wait forever.
        blocking = () if block is None else ("BLOCK", max(1, int(block * 1000)))
        return (
            "XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", limit, *blocking,
            "STREAMS", self.stream, ">",
        )  # fmt: skip

    def touch(self, entries: list[Entry]) -> Command:
        """Reset the idle time of entries pending here, so that no one claims them yet."""
        ids = [entry[0] for entry in entries]
        return ("XCLAIM", self.stream, self.group, self.consumer, 0, *ids, "JUSTID")

    def acknowledge(self, entries: list[Entry]) -> Command:
        """Acknowledged entries leave the stream at the next ``fetch``, by any consumer."""
        return ("XACK", self.stream, self.group, *[entry[0] for entry in entries])

    def leave(self) -> list[Command]:
        """At close: the held entries back at the end of the stream, and this consumer gone."""
        with self._lock:
            held = list(self._held)
            self._held.clear()
            self._held_ids.clear()
        self.reading = False
        added = [("XADD", self.stream, "*", "headers", h, "body", b) for _, h, b, _ in held]
        retire = ("EVAL", _RETIRE, 1, self.stream, self.group, self.consumer)
        return [*added, *([self.acknowledge(held)] if held else []), retire]

    def depth(self) -> Command:
        return self._script(_DEPTH)

    def heads(self) -> Command:
        return self._script(_HEADS)

    def _script(self, script: str, *args: Any) -> Command:
        return ("EVAL", script, 2, self.stream, self.delayed, self.group, *args)

    # -- replies ---------------------------------------------------------------------------

    def claimed(self, reply: list[Any]) -> list[Entry]:
        cursor, entries = reply[0], reply[1]
        self._cursor = cursor
        # Scanned to the end: look again later; else go on with the next fetch.
        pause = self.claim_idle / 2 if cursor == _LAST_CURSOR else 0.0
        self._next_claim = time.monotonic() + pause
        return self._entries(entries, redelivered=True)

    def fetched(self, replies: list[Any], now: float) -> tuple[list[Entry], float]:
        """The entries a ``fetch`` got, and how long until another might find more."""
        next_due, read = replies
        until_claim = max(0.0, self._next_claim - time.monotonic())
        until_due = max(0.0, float(next_due) - now) if next_due else until_claim
        return self.read_reply(read), min(until_claim, until_due)

    def read_reply(self, reply: Any) -> list[Entry]:
        if not reply:
            return []
        # RESP3 replies with a map of streams, RESP2 with a list of [stream, entries].
        entries = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
        return self._entries(entries, redelivered=False)

    def age(self, reply: list[Any], now: float) -> float | None:
        """Seconds since the oldest message became available, from the ``heads`` reply."""
        head, due = reply
        ages = [now - int(head.split(b"-")[0]) / 1000] if head else []
        if due and float(due) <= now:
            ages.append(now - float(due))
        return max(0.0, *ages) if ages else None

    def _entries(self, raw: list[Any], redelivered: bool) -> list[Entry]:
        entries: list[Entry] = []
        for entry_id, fields in raw:
            if not fields or entry_id in self._held_ids:
                continue  # deleted before it was claimed, or already held here
            if len(fields) == 4 and fields[0] == b"headers":
                entries.append((entry_id, fields[1], fields[3], redelivered))
            else:  # written by another program
                named = dict(zip(fields[::2], fields[1::2], strict=False))
                headers, body = named.get(b"headers", b"{}"), named.get(b"body", b"")
                entries.append((entry_id, headers, body, redelivered))
        return entries

    # -- entries held back -----------------------------------------------------------------

    def take_held(self, limit: int) -> list[Entry]:
        if not self._held:
            return []
        with self._lock:
            taken = [self._held.popleft() for _ in range(min(limit, len(self._held)))]
            self._held_ids.difference_update(entry[0] for entry in taken)
        return taken

    def hold(self, entries: list[Entry], handed: int) -> None:
        """Keep ``entries`` (still pending here) for the next consume, in order.

        The first ``handed`` of them were handed out already: they count as redelivered.
        """
        if not entries:
            return
        kept = [(i, h, b, r or n < handed) for n, (i, h, b, r) in enumerate(entries)]
        with self._lock:
            self._held.extendleft(reversed(kept))
            self._held_ids.update(entry[0] for entry in kept)


class RedisChannel(Channel):
    """A channel on a Redis stream, consumed through a consumer group (Redis 7 or later).

    ``stream`` defaults to ``busway:{NAME}``; delayed messages wait in ``STREAM:delayed``.
    Every process reads as its own consumer of ``group`` (named ``consumer``, by default from
    the host, the process and a random part). Entries a consumer left pending for
    ``claim_idle`` seconds are claimed by another: keep handlers well within it. Commands
    that lose the connection are retried ``retries`` times, backing off up to
    ``max_backoff`` seconds; ``options`` go to redis-py's ``Redis.from_url``.
    """

    def __init__(
        self,
        name: str,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        stream: str | None = None,
        group: str = "busway",
        consumer: str | None = None,
        claim_idle: float = 30.0,
        batch_size: int = 100,
        retries: int = 10,
        max_backoff: float = 2.0,
        **options: Any,
    ) -> None:
        if claim_idle <= 0 or batch_size < 1:
            raise ValueError("RedisChannel needs claim_idle > 0 and batch_size >= 1")
        self.name = name
        self.url = url
        self.batch_size = batch_size
        consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._stream = _Stream(stream or f"busway:{{{name}}}", group, consumer, claim_idle)
        self._options = options
        self._retries = retries
        self._max_backoff = max_backoff
        self._clock: Callable[[], float] = time.time
        self._client: redis.Redis | None = None
        self._aclient: tuple[asyncio.AbstractEventLoop, redis.asyncio.Redis] | None = None
        self._unsent: weakref.WeakKeyDictionary[Batch, list[Command]] = weakref.WeakKeyDictionary()
        self._connecting = threading.Lock()

    def __repr__(self) -> str:
        return f"RedisChannel({self.name!r}, stream={self.stream!r})"

    @property
    def stream(self) -> str:
        return self._stream.stream

    @property
    def consumer(self) -> str:
        return self._stream.consumer

    def attach(self, context: ChannelContext) -> None:
        self._clock = context.clock

    # -- connections -----------------------------------------------------------------------

    @property
    def client(self) -> redis.Redis:
        client = self._client
        if client is None:
            with self._connecting:
                if self._client is None:
                    retry = redis.retry.Retry(self._backoff(), self._retries)
                    made = redis.Redis.from_url(self.url, retry=retry, **self._options)
                    self._client = _raw_replies(made)
                client = self._client
        return client

    @property
    def aclient(self) -> redis.asyncio.Redis:
        """The asyncio client of the running event loop."""
        loop = asyncio.get_running_loop()
        if self._aclient is None or self._aclient[0] is not loop:
            retry = redis.asyncio.retry.Retry(self._backoff(), self._retries)
            client = redis.asyncio.Redis.from_url(self.url, retry=retry, **self._options)
            self._aclient = (loop, _raw_replies(client))
        return self._aclient[1]

    def _backoff(self) -> ExponentialWithJitterBackoff:
        return ExponentialWithJitterBackoff(cap=self._max_backoff, base=0.05)

    def _call(self, *commands: Command) -> list[Any]:
        """Run ``commands`` in a pipeline; make the group again if it is gone."""
        try:
            return self._pipeline(commands)
        except redis.ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            # The stream or its group is gone (Redis restarted without persistence): again.
            self.setup()
            return self._pipeline(commands)

    async def _acall(self, *commands: Command) -> list[Any]:
        try:
            return await self._apipeline(commands)
        except redis.ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            await self.asetup()
            return await self._apipeline(commands)

    def _pipeline(self, commands: Iterable[Command], transaction: bool = False) -> list[Any]:
        with self.client.pipeline(transaction=transaction) as pipe:
            for command in commands:
                _execute(pipe, command)
            return pipe.execute()

    async def _apipeline(self, commands: Iterable[Command], transaction: bool = False) -> list[Any]:
        async with self.aclient.pipeline(transaction=transaction) as pipe:
            for command in commands:
                _execute(pipe, command)
            return await pipe.execute()

    # -- setting up ------------------------------------------------------------------------

    def setup(self) -> None:
        try:
            _execute(self.client, self._stream.create_group())
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def asetup(self) -> None:
        try:
            await _execute(self.aclient, self._stream.create_group())
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    # -- sending ---------------------------------------------------------------------------

    def send(self, envelope: Envelope) -> None:
        command = self._stream.send(envelope, self._clock())
        batch = current_batch.get()
        if batch is None:
            _execute(self.client, command)
        else:
            self._unsent_in(batch).append(command)

    async def asend(self, envelope: Envelope) -> None:
        command = self._stream.send(envelope, self._clock())
        batch = current_batch.get()
        if batch is None:
            await _execute(self.aclient, command)
        else:
            self._unsent_in(batch).append(command)

    def _unsent_in(self, batch: Batch) -> list[Command]:
        """Sends made while a consumer hands out a batch go out together, before its ack."""
        unsent = self._unsent.get(batch)
        if unsent is None:
            unsent = self._unsent[batch] = []
            batch.before_ack.append(lambda: self._flush(unsent))
        return unsent

    def _flush(self, unsent: list[Command]) -> Any:
        """Send ``unsent`` now, or return the awaitable that does, on an asyncio consumer."""
        commands, unsent[:] = list(unsent), []
        if not commands:
            return None
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # a sync consumer's batch
            return self._pipeline(commands)
        return self._apipeline(commands)

    # -- consuming -------------------------------------------------------------------------

    def consume(self, handle: Handle, max_messages: int, wait: float) -> int:
        limit = min(max_messages, self.batch_size)
        if limit < 1:
            return 0
        entries = self._stream.take_held(limit)
        if entries:
            self._call(self._stream.touch(entries))  # held a while: not for others to claim
        else:
            entries = self._fetch(limit, wait)
        return self._hand_out(handle, entries) if entries else 0

    def _fetch(self, limit: int, wait: float) -> list[Entry]:
        deadline = time.monotonic() + wait
        while True:
            if self._stream.claim_due():
                claimed = self._stream.claimed(*self._call(self._stream.claim(limit)))
                if claimed:
                    return claimed
            now = self._clock()
            entries, pause = self._stream.fetched(self._call(*self._stream.fetch(now, limit)), now)
            remaining = deadline - time.monotonic()
            if entries or remaining <= 0:
                return entries
            (reply,) = self._call(self._stream.read(limit, min(remaining, pause)))
            entries = self._stream.read_reply(reply)
            if entries or time.monotonic() >= deadline:
                return entries

    def _hand_out(self, handle: Handle, entries: list[Entry]) -> int:
        batch = Batch()
        token = current_batch.set(batch)
        done = 0
        failure: BaseException | None = None
        touch_at = time.monotonic() + self._stream.claim_idle / 3
        try:
            for entry in entries:
                if time.monotonic() > touch_at:  # a slow batch: keep it all here until acknowledged
                    self._call(self._stream.touch(entries))
                    touch_at = time.monotonic() + self._stream.claim_idle / 3
                try:
                    handle(self._delivery(entry))
                except MessageReturned:
                    break
                except BaseException as error:
                    failure = error
                    break
                done += 1
            for callback in batch.before_ack:
                callback()
        except BaseException:
            self._stream.hold(entries, done + (failure is not None))  # nothing acknowledged
            raise
        finally:
            current_batch.reset(token)
        self._stream.hold(entries[done:], 1 if failure else 0)
        if done:
            _execute(self.client, self._stream.acknowledge(entries[:done]))
        if failure is not None:
            raise failure
        return done

    async def aconsume(self, handle: AsyncHandle, max_messages: int, wait: float) -> int:
        limit = min(max_messages, self.batch_size)
        if limit < 1:
            return 0
        entries = self._stream.take_held(limit)
        if entries:
            await self._acall(self._stream.touch(entries))
        else:
            entries = await self._afetch(limit, wait)
        return await self._ahand_out(handle, entries) if entries else 0

    async def _afetch(self, limit: int, wait: float) -> list[Entry]:
        deadline = time.monotonic() + wait
        while True:
            if self._stream.claim_due():
                claimed = self._stream.claimed(*await self._acall(self._stream.claim(limit)))
                if claimed:
                    return claimed
            now = self._clock()
            replies = await self._acall(*self._stream.fetch(now, limit))
            entries, pause = self._stream.fetched(replies, now)
            remaining = deadline - time.monotonic()
            if entries or remaining <= 0:
                return entries
            (reply,) = await self._acall(self._stream.read(limit, min(remaining, pause)))
            entries = self._stream.read_reply(reply)
            if entries or time.monotonic() >= deadline:
                return entries

    async def _ahand_out(self, handle: AsyncHandle, entries: list[Entry]) -> int:
        batch = Batch()
        token = current_batch.set(batch)
        done = 0
        failure: BaseException | None = None
        touch_at = time.monotonic() + self._stream.claim_idle / 3
        try:
            for entry in entries:
                if time.monotonic() > touch_at:
                    await self._acall(self._stream.touch(entries))
                    touch_at = time.monotonic() + self._stream.claim_idle / 3
                try:
                    await handle(self._delivery(entry))
                except MessageReturned:
                    break
                except BaseException as error:
                    failure = error
                    break
                done += 1
            for callback in batch.before_ack:
                pending = callback()
                if pending is not None:
                    await pending
        except BaseException:
            self._stream.hold(entries, done + (failure is not None))
            raise
        finally:
            current_batch.reset(token)
        self._stream.hold(entries[done:], 1 if failure else 0)
        if done:
            await _execute(self.aclient, self._stream.acknowledge(entries[:done]))
        if failure is not None:
            raise failure
        return done

    def _delivery(self, entry: Entry) -> Delivery:
        _, headers, body, redelivered = entry
        try:
            decoded = _decode_headers(headers)
        except msgspec.DecodeError:
            decoded = {}  # not a busway message: the core sends it to the dead letter store
        return Delivery(Envelope(body, decoded), self.name, redelivered=redelivered)

    # -- inspection ------------------------------------------------------------------------

    def depth(self) -> int:
        """Messages not handled yet: not acknowledged (pending ones included), and delayed."""
        return int(_execute(self.client, self._stream.depth()))

    def oldest_age(self) -> float | None:
        """Seconds since the oldest unhandled message became available."""
        return self._stream.age(_execute(self.client, self._stream.heads()), self._clock())

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        if self._stream.reading:
            try:
                self._pipeline(self._stream.leave(), transaction=True)
            except redis.RedisError as error:
                _left_pending(self, error)
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        if self._aclient is not None and self._aclient[0] is asyncio.get_running_loop():
            if self._stream.reading:
                try:
                    await self._apipeline(self._stream.leave(), transaction=True)
                except redis.RedisError as error:
                    _left_pending(self, error)
            await self._aclient[1].aclose()
        self._aclient = None
        self.close()


def _left_pending(channel: RedisChannel, error: Exception) -> None:
    log.warning(
        "%r could not give back the messages it holds (%s); other consumers claim them "
        "after claim_idle",
        channel,
        error,
    )


def _execute(client: Any, command: Command) -> Any:
    """``client.execute_command(*command)``: one command, from any client or pipeline."""
    return client.execute_command(*command)


def _raw_replies(client: Any) -> Any:
    """Stream entries as Redis sends them, not made into dicts: cheaper, and one shape."""
    for command in ("XREADGROUP", "XAUTOCLAIM", "XCLAIM"):
        client.set_response_callback(command, lambda response, **_: response)
    return client
