"""The queues ``setup`` declares and which one a message goes to: one queue, or partitions of
it, each with a single active consumer, for ordering keys; and the priority a message takes.

Partitions keep RabbitMQ's own promise, the order of one queue with one consumer, and spread
keys over several such queues: a key's messages go to one partition, chosen by a stable hash
of the key, so they keep their order, while the partitions run side by side. It is Kafka's
design in RabbitMQ's terms, and it has Kafka's price: keys that share a partition wait for
each other, and no more messages are handled at once than there are partitions.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from busway.message import ID, ORDERING_KEY, PRIORITY, HeaderValue
from busway.ordering import MAX_PRIORITY, priority_of, stored_key

SINGLE_ACTIVE_CONSUMER = "x-single-active-consumer"
MAX_PRIORITY_ARGUMENT = "x-max-priority"


@dataclass(frozen=True, slots=True)
class _Topology:
    """The queues of a channel: ``queues[0]`` alone, or one per partition."""

    queue: str
    partitions: int | None = None
    priorities: bool = False
    arguments: Mapping[str, Any] = field(default_factory=dict)

    @property
    def queues(self) -> tuple[str, ...]:
        if self.partitions is None:
            return (self.queue,)
        return tuple(f"{self.queue}.{index}" for index in range(self.partitions))

    @property
    def ordered(self) -> bool:
        """Whether each queue's messages are handed out one at a time, in order."""
        return self.partitions is not None

    def declared_arguments(self) -> dict[str, Any]:
        """The arguments every queue is declared with."""
        arguments = dict(self.arguments)
        if self.partitions is not None:
            arguments[SINGLE_ACTIVE_CONSUMER] = True
        if self.priorities:
            arguments[MAX_PRIORITY_ARGUMENT] = MAX_PRIORITY
        return arguments

    def queue_for(self, headers: Mapping[str, HeaderValue]) -> str:
        """The queue a message goes to: its key's partition, or its id's when it has no key."""
        if self.partitions is None:
            return self.queue
        key = stored_key(headers.get(ORDERING_KEY)) or str(headers.get(ID))
        return f"{self.queue}.{zlib.crc32(key.encode()) % self.partitions}"

    def priority_for(self, headers: Mapping[str, HeaderValue]) -> int:
        """The AMQP priority of a message: 0 on a channel that keeps none."""
        return priority_of(headers.get(PRIORITY)) if self.priorities else 0

    def problems(self, channel: str) -> list[str]:
        """What is wrong with these settings, one sentence each."""
        problems = []
        partitions = self.partitions
        if partitions is not None and (
            isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1
        ):
            problems.append(
                f"AmqpChannel {channel!r} has partitions={partitions!r}; it must be a whole "
                "number of queues, 1 or more (or None for one queue without ordering keys)"
            )
        elif partitions is not None and self.priorities:
            problems.append(
                f"AmqpChannel {channel!r} has both partitions= and priorities=True; inside a "
                "partition RabbitMQ would hand a later message of an ordering key out before "
                "an earlier one of lower priority, so keep ordered messages and prioritised "
                "ones on two channels"
            )
        for name, instead in (
            (SINGLE_ACTIVE_CONSUMER, "partitions=, which also sends each key to its partition"),
            (MAX_PRIORITY_ARGUMENT, "priorities=True, which also gives each message its priority"),
        ):
            if name in self.arguments:
                problems.append(
                    f"AmqpChannel {channel!r} has {name!r} in queue_arguments; use {instead}"
                )
        return problems
