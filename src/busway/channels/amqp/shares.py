"""Which partitions of a channel a link consumes: its share, so that several processes split
them instead of one taking every partition.

Single active consumer alone makes the first process to subscribe active on every partition,
and the others stand by. So a link consuming a partitioned channel first joins its members
queue, ``busway.QUEUE.members``: nobody publishes to it, and its consumer count is the number
of links consuming the channel. Its share is the partitions divided by the members, rounded
up. It takes a partition by declaring the partition's exclusive queue,
``busway.QUEUE.N.owner``: RabbitMQ lets one connection at a time hold an exclusive queue and
deletes it when that connection goes, a process killed outright included, so each partition
is taken by one link at most, and freed by its death.

About every second, each link counts the members again. One holding more than its share
gives the rest up; one holding fewer takes free partitions. The owner queues only say who
subscribes: the order is still kept by each partition's single active consumer, which stays
with a link that gave a partition up until it has closed the AMQP channel it consumed on,
its messages in hand handled and its fetched ones back in their place.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import cast

import aiormq
from aiormq.exceptions import ChannelLockedResource
from yarl import URL

from busway.channels.amqp.topology import _Topology

BALANCE_INTERVAL = 1.0
"""About how many seconds pass between two counts of a channel's members."""
_MEMBERS_EXPIRE_MS = 60_000
"""A members queue nobody consumes or declares for this long is deleted by RabbitMQ."""


class _Shares:
    """The partitions a link has taken (``held``), on a connection of their own.

    That connection carries the link's subscription too (``connection``): when it goes, a
    lost network or ``leave``, RabbitMQ deletes the owner queues, counts one member less and
    puts the fetched messages back, all together. Runs on the link's event loop.
    """

    def __init__(self, url: str, name: str, topology: _Topology) -> None:
        self._url = url
        self._name = name
        self._topology = topology
        count = len(topology.queues)
        first = random.randrange(count)
        # Links start taking at different partitions, so that they rarely want the same one.
        self._preference = [(first + offset) % count for offset in range(count)]
        self._members = f"busway.{topology.queue}.members"
        self._channel: aiormq.Channel | None = None
        self.connection: aiormq.Connection | None = None
        self.held: set[int] = set()

    @property
    def joined(self) -> bool:
        return self.connection is not None and not self.connection.is_closed

    def owner_queue(self, lane: int) -> str:
        return f"busway.{self._topology.queues[lane]}.owner"

    async def join(self, patience: float) -> aiormq.Connection:
        """Open the connection and count this link among the channel's members. Called
        when there is no open connection, so nothing fetched on one is in hand."""
        connection = await asyncio.wait_for(
            aiormq.connect(
                URL(self._url),
                client_properties={"connection_name": f"busway {self._name} consumer"},
            ),
            max(patience, 0.01),
        )
        self.connection, self._channel = connection, None
        self.held.clear()  # what was taken on a connection since lost went with it
        try:
            await self._counting()
        except BaseException:
            await self.leave()
            raise
        return connection

    async def _counting(self) -> aiormq.Channel:
        """The AMQP channel this link is counted on as a member, opened again if lost."""
        if self._channel is not None and not self._channel.is_closed:
            return self._channel
        assert self.connection is not None
        channel = cast(aiormq.Channel, await self.connection.channel(publisher_confirms=False))
        await channel.queue_declare(self._members, arguments={"x-expires": _MEMBERS_EXPIRE_MS})
        await channel.basic_consume(self._members, _ignore)
        self._channel = channel
        return channel

    async def share(self) -> int:
        """How many partitions this link should hold, by the members counted now."""
        channel = await self._counting()
        declared = await channel.queue_declare(self._members, passive=True)
        members = max(1, declared.consumer_count or 0)
        return -(-len(self._topology.queues) // members)

    async def rebalance(self) -> None:
        """Take free partitions up to the share, or give up those above it."""
        assert self.connection is not None
        share = await self.share()
        held = self.held
        if len(held) > share:
            extra = [lane for lane in reversed(self._preference) if lane in held]
            await self.give_up(extra[: len(held) - share])
            return
        trying: aiormq.Channel | None = None
        try:
            for lane in self._preference:
                if len(held) >= share:
                    break
                if lane in held:
                    continue
                if trying is None or trying.is_closed:
                    # A refused declare closes the AMQP channel it was made on.
                    trying = cast(
                        aiormq.Channel, await self.connection.channel(publisher_confirms=False)
                    )
                try:
                    await trying.queue_declare(self.owner_queue(lane), exclusive=True)
                except ChannelLockedResource:
                    continue  # another link holds it
                held.add(lane)
        finally:
            if trying is not None and not trying.is_closed:
                with contextlib.suppress(Exception):
                    await trying.close()

    async def give_up(self, lanes: list[int]) -> None:
        """Free ``lanes`` for other links to take."""
        channel = await self._counting()
        for lane in lanes:
            await channel.queue_delete(self.owner_queue(lane))
            self.held.discard(lane)

    async def leave(self) -> None:
        """Close the connection: RabbitMQ frees every partition taken on it, stops counting
        this link among the members, and puts the messages fetched on it back. Called with
        no message in hand."""
        connection, self.connection, self._channel = self.connection, None, None
        self.held.clear()
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(Exception):
                await connection.close()


async def _ignore(message: object) -> None:
    """The members queue carries no messages; its consumers are only counted."""
