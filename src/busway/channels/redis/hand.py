"""A batch of stream entries handed out one at a time, and what to acknowledge after."""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable, Iterator

from busway.channels.base import Batch, Delivery, Unsent
from busway.channels.redis.stream import Entry, Stream
from busway.channels.redis.wire import read_entry

log = logging.getLogger("busway.redis")


class Hand:
    """Entries handed out one at a time under one ``Batch``, and what becomes of them.

    The loop that hands them out counts ``handled``, sets ``failure`` when a handler raised,
    runs the batch's ``before_ack`` callbacks into ``unsent``, then ``settle``-s: the entries
    to acknowledge come back, the rest stay pending here for the next consume. The sends
    whose failure the callbacks report as ``Unsent`` keep back only their own messages.
    """

    def __init__(self, channel: str, stream: Stream, entries: list[Entry]) -> None:
        self.channel = channel
        self.stream = stream
        self.entries = entries
        self.batch = Batch()
        self.handled = 0
        self.failure: BaseException | None = None
        self.unsent: Unsent | None = None
        self.kept: list[Entry] = []
        """Handled, but not sent on: left pending for a later claim, with this consumer alive."""
        self._sources: list[Hashable] = []
        self._touch_every = stream.claim_idle / 3
        self._touch_at = time.monotonic() + self._touch_every

    def __iter__(self) -> Iterator[Delivery]:
        batch, sources = self.batch, self._sources
        for entry_id, headers, body, redelivered, crashes in self.entries:
            envelope, unreadable = read_entry(headers, body)
            batch.current = entry_id
            sources.append(entry_id)
            yield Delivery(
                envelope,
                self.channel,
                redelivered=redelivered,
                crashes=crashes,
                unreadable=unreadable,
            )

    def slow(self) -> bool:
        """Whether to keep the entries here a while longer, lest another consumer claims them."""
        now = time.monotonic()
        if now <= self._touch_at:
            return False
        self._touch_at = now + self._touch_every
        return True

    def give_back(self) -> None:
        """Nothing is acknowledged: hold every entry for a later delivery."""
        self.stream.hold(self.entries, self.handled + (self.failure is not None))

    def settle(self) -> list[Entry]:
        """Hold what is not done with, return the entries to acknowledge."""
        done, rest = self.entries[: self.handled], self.entries[self.handled :]
        kept: list[Entry] = []
        if self.unsent is not None:
            unsent = self.unsent.keys
            tagged = list(zip(done, self._sources[: self.handled], strict=True))
            kept = [entry for entry, source in tagged if source in unsent]
            done = [entry for entry, source in tagged if source not in unsent]
            self.kept = kept
            log.warning(
                "channel %r: %d message(s) not sent on, left pending for a later try: %s",
                self.channel,
                len(kept),
                self.unsent.error,
            )
        # What could not be sent on stays pending, unacknowledged and not held here: it is
        # claimed again once idle for ``claim_idle``, a pause before the next try, while the
        # messages behind it flow on.
        self.stream.hold(rest, 1 if self.failure is not None else 0)
        return done

    def raise_failure(self) -> None:
        """Raise the handler's error, else the error of the sends that failed, if any."""
        if self.failure is not None:
            raise self.failure
        if self.unsent is not None:
            raise self.unsent.error
