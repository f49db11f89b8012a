"""The link of a partitioned channel: it consumes its share of the partitions
(``busway.channels.amqp.shares``), follows that share as workers come and go, and gives its
partitions up when it closes or goes idle."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, cast

import aiormq

from busway.channels.amqp.consuming import _ConsumingLink
from busway.channels.amqp.link import _transient
from busway.channels.amqp.shares import BALANCE_INTERVAL, _Shares

if TYPE_CHECKING:
    from busway.channels.amqp.channel import AmqpChannel

log = logging.getLogger("busway.amqp")


class _PartitionedLink(_ConsumingLink):
    def __init__(self, owner: AmqpChannel) -> None:
        super().__init__(owner)
        self._shares = _Shares(owner.url, owner.name, owner.topology)
        self._balancing: asyncio.Task[None] | None = None

    async def close(self) -> None:
        await super().close()
        await self._leave()

    def _consuming(self) -> bool:
        return self._consumer is not None or self._shares.joined

    async def _idle(self) -> None:
        """Nobody consumes: give the fetched messages back, and the partitions taken."""
        await self.pause()
        with self._lock:
            busy = bool(self._calls or self._in_hand)
        if not busy:
            await self._leave()

    async def _partitions_channel(self, patience: float) -> tuple[aiormq.Channel, list[int]]:
        """An AMQP channel to consume the partitions on, which the link may close without
        disturbing its sends (``prefetch`` counts per partition), and the partitions to
        consume: this link's share, taken as it joins the channel's members."""
        shares = self._shares
        if not shares.joined:
            await shares.join(patience)
            if self._balancing is None or self._balancing.done():
                self._balancing = self.spawn(self._balance())
            await shares.rebalance()  # the first share now, not in a second
        assert shares.connection is not None
        channel = cast(aiormq.Channel, await shares.connection.channel(publisher_confirms=False))
        await channel.basic_qos(prefetch_count=self.owner.prefetch)
        return channel, sorted(shares.held)

    async def _balance(self) -> None:
        """Count the members about every second, and take or give up partitions to match."""
        shares = self._shares
        while shares.joined:
            await asyncio.sleep(BALANCE_INTERVAL * random.uniform(0.75, 1.25))
            if not shares.joined:
                return
            try:
                await shares.rebalance()
                await self._follow(shares.held)
            except Exception as error:
                log.log(
                    logging.DEBUG if _transient(error) else logging.WARNING,
                    "channel %r: sharing the partitions: %s",
                    self.owner.name,
                    error,
                )

    def _subscription(self) -> asyncio.Lock:
        assert self._subscribing is not None
        return self._subscribing

    async def _follow(self, held: set[int]) -> None:
        """Make the subscription consume the partitions ``held``, no more and no fewer.

        One consuming a partition given up stops: its AMQP channel closes once none of its
        messages is in hand, which puts the fetched ones back in place, and the next
        subscription takes the partitions still held. Without a subscription, the next one
        follows ``held`` by itself."""
        async with self._subscription():
            with self._lock:
                consumer = self._consumer
            if consumer is None or not consumer.active():
                return
            if set(consumer.lanes) - held:
                with self._lock:
                    if self._consumer is consumer:
                        self._consumer = None
                    channel = consumer.channel
                    idle = channel not in self._in_hand.values()
                    if not idle:
                        self._retired.add(channel)
                if idle:
                    await self._close_channel(channel)
                self._wake()
                return
            missing = sorted(held - set(consumer.lanes))
            if missing:
                await self._consume_lanes(consumer, missing)

    async def _leave(self) -> None:
        """Stop counting among the channel's members, giving up every partition."""
        balancing, self._balancing = self._balancing, None
        if balancing is not None:
            balancing.cancel()
        await self._shares.leave()
