"""A fetched batch, handed out one message at a time, and what is left to give back."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime

from nats.aio.msg import Msg

from busway.channels.base import Delivery
from busway.channels.nats.wire import read_message


class Hand:
    """A fetched batch handed out one message at a time, and what is left to give back."""

    def __init__(
        self, channel: str, messages: list[Msg], clock: Callable[[], float], ack_wait: float
    ) -> None:
        self.channel = channel
        self.messages = messages
        self.clock = clock
        self.extend_every = ack_wait / 2
        self.extended = time.monotonic()
        self.position = 0
        self.handled = 0
        self.in_hand: Msg | None = None
        self.later: list[tuple[Msg, float]] = []
        """Fetched before their time, with that time: to be given back until then."""

    def __iter__(self) -> Iterator[tuple[Msg, Delivery]]:
        while self.position < len(self.messages):
            message = self.messages[self.position]
            self.position += 1
            envelope, unreadable = read_message(message.data, message.headers)
            deliver_at = envelope.deliver_at
            if deliver_at is not None and deliver_at > self.clock():
                self.later.append((message, deliver_at))
                continue
            self.in_hand = message
            delivered = message.metadata.num_delivered
            delivery = Delivery(
                envelope,
                self.channel,
                redelivered=delivered > 1,
                crashes=crashes(delivered, deliver_at, message.metadata.timestamp),
                unreadable=unreadable,
            )
            yield message, delivery

    def done(self) -> None:
        self.in_hand = None
        self.handled += 1

    def slow(self) -> bool:
        """Whether the batch is half way to its ack_wait since it started or last said so."""
        now = time.monotonic()
        if now - self.extended < self.extend_every or not self.waiting():
            return False
        self.extended = now
        return True

    def waiting(self) -> list[Msg]:
        return [message for message, _ in self.later] + self.messages[self.position :]

    def unhandled(self) -> list[Msg]:
        rest = self.messages[self.position :]
        return [self.in_hand, *rest] if self.in_hand is not None else rest


def crashes(delivered: int, deliver_at: float | None, stored: datetime) -> int:
    """How many deliveries of a message ended without an ack or a nak of busway's own.

    JetStream counts every delivery: one that ended with its worker dead (redelivered after
    ``ack_wait``), and one busway gave back with a nak. A message stored before its
    ``deliver_at`` was, most likely, fetched too early once and given back until then: that
    delivery is not counted. The other naks (the rest of a batch at a graceful stop, or after
    an error outside the handlers) are counted.
    """
    early = deliver_at is not None and deliver_at > stored.timestamp()
    return max(0, delivered - 1 - early)


def suspect(message: Msg) -> bool:
    """Whether a worker died with ``message`` in hand before (see ``crashes``)."""
    delivered = message.metadata.num_delivered
    if delivered <= 1:
        return False
    envelope, _ = read_message(message.data, message.headers)
    return crashes(delivered, envelope.deliver_at, message.metadata.timestamp) > 0
