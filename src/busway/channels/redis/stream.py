"""The commands a Redis channel sends and what their replies mean, free of any I/O.

The sync and asyncio edges share all of it: they only run the commands made here and hand
the replies back.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from typing import Any

from busway.channels.base import Envelope
from busway.channels.redis.scripts import CLAIM, DEPTH, HEADS, PREPARE, RETIRE
from busway.channels.redis.wire import encode_headers, fields, headers_and_body

Command = tuple[Any, ...]
Entry = tuple[bytes, bytes, bytes, bool, int]
"""A stream entry read: its id, headers as JSON, body, whether it was handed out before, and
how many of its deliveries ended without an acknowledgement (deaths of consumers, see
``claimed``)."""

LAST_CURSOR = b"0-0"


class Stream:
    """The keys, the commands, what replies mean, and the entries held back for a later
    delivery."""

    def __init__(
        self, stream: str, group: str, consumer: str, claim_idle: float, counting: bool = True
    ) -> None:
        self.stream = stream
        self.delayed = f"{stream}:delayed"
        self.group = group
        self.consumer = consumer
        self.claim_idle = claim_idle
        self.counting = counting
        """Whether to count the deaths of consumers, for the crash-loop guard."""
        self.reading = False
        self._next_claim = 0.0
        self._cursor = LAST_CURSOR
        self._held: deque[Entry] = deque()
        self._held_ids: set[bytes] = set()
        self._lock = threading.Lock()

    # -- commands --------------------------------------------------------------------------

    def create_group(self) -> Command:
        # From the start: messages sent before the group existed are delivered too.
        return ("XGROUP", "CREATE", self.stream, self.group, "0", "MKSTREAM")

    def send(self, envelope: Envelope, now: float) -> Command:
        headers = encode_headers(envelope.headers, self.stream)
        deliver_at = envelope.deliver_at
        if deliver_at is not None and deliver_at > now:
            member = secrets.token_hex(8).encode() + b"\n" + headers + b"\n" + envelope.body
            return ("ZADD", self.delayed, repr(deliver_at), member)
        return ("XADD", self.stream, "*", *fields(headers, envelope.body))

    def claim_due(self) -> bool:
        """Whether to look for entries other consumers left idle (every ``claim_idle / 2``)."""
        return time.monotonic() >= self._next_claim

    def claim(self, limit: int) -> Command:
        """Claim entries idle for ``claim_idle``; counting, one at a time, with its count.

        A claimed entry was in hand when its consumer died: a suspect. Claimed one at a time,
        it is alone here, and a next death counts against it alone (the others stay pending
        with the dead consumer until claimed in turn).
        """
        idle = int(self.claim_idle * 1000)
        if self.counting:
            return (
                "EVAL", CLAIM, 1, self.stream, self.group, self.consumer, idle, self._cursor, 1,
            )  # fmt: skip
        return (
            "XAUTOCLAIM", self.stream, self.group, self.consumer, idle, self._cursor,
            "COUNT", limit,
        )  # fmt: skip

    def fetch(self, now: float, limit: int) -> list[Command]:
        self.reading = True
        return [self._script(PREPARE, repr(now)), self.read(limit)]

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

    def keep_count(self, entries: list[Entry]) -> list[Command]:
        """Left pending with this consumer alive: set each delivery count back, so that the
        claim to come counts no death for it (``XCLAIM`` with ``RETRYCOUNT``)."""
        by_crashes: dict[int, list[bytes]] = {}
        for entry in entries:
            by_crashes.setdefault(entry[4], []).append(entry[0])
        pending = "XCLAIM", self.stream, self.group, self.consumer, 0
        return [
            (*pending, *ids, "RETRYCOUNT", crashes, "JUSTID") for crashes, ids in by_crashes.items()
        ]

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
        # Added anew, each starts with no deaths counted: a graceful stop counts none.
        added = [("XADD", self.stream, "*", *fields(h, b)) for _, h, b, _, _ in held]
        retire = ("EVAL", RETIRE, 1, self.stream, self.group, self.consumer)
        return [*added, *([self.acknowledge(held)] if held else []), retire]

    def depth(self) -> Command:
        return self._script(DEPTH)

    def heads(self) -> Command:
        return self._script(HEADS)

    def _script(self, script: str, *args: Any) -> Command:
        return ("EVAL", script, 2, self.stream, self.delayed, self.group, *args)

    # -- replies ---------------------------------------------------------------------------

    def claimed(self, reply: list[Any]) -> list[Entry]:
        """The entries a ``claim`` got, counting, each with its deaths: its deliveries before
        this claim, none of which ended with an acknowledgement."""
        cursor, entries = reply[0], reply[1]
        self._cursor = cursor
        # Scanned to the end: look again later; else go on with the next fetch.
        pause = self.claim_idle / 2 if cursor == LAST_CURSOR else 0.0
        self._next_claim = time.monotonic() + pause
        counts = reply[2] if self.counting else [1] * len(entries)
        return self._entries(entries, redelivered=True, deliveries=counts)

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
        return self._entries(entries, redelivered=False, deliveries=None)

    def age(self, reply: list[Any], now: float) -> float | None:
        """Seconds since the oldest message became available, from the ``heads`` reply."""
        head, due = reply
        ages = [now - int(head.split(b"-")[0]) / 1000] if head else []
        if due and float(due) <= now:
            ages.append(now - float(due))
        return max(0.0, *ages) if ages else None

    def _entries(
        self, raw: list[Any], redelivered: bool, deliveries: list[int] | None
    ) -> list[Entry]:
        entries: list[Entry] = []
        for index, (entry_id, values) in enumerate(raw):
            if not values or entry_id in self._held_ids:
                continue  # deleted before it was claimed, or already held here
            crashes = max(0, int(deliveries[index]) - 1) if deliveries else 0
            headers, body = headers_and_body(values)
            entries.append((entry_id, headers, body, redelivered, crashes))
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
        kept = [(i, h, b, r or n < handed, c) for n, (i, h, b, r, c) in enumerate(entries)]
        with self._lock:
            self._held.extendleft(reversed(kept))
            self._held_ids.update(entry[0] for entry in kept)
