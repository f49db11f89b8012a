"""A batch's sends, deferred until before its acknowledgement: commands sent together then, in
one pipeline."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Hashable
from typing import Any

from busway.channels.base import Batch
from busway.channels.redis.link import Link
from busway.channels.redis.stream import Command

Send = tuple[Hashable | None, Command]
"""A command, tagged with the batch's message in hand when it was sent (``Batch.current``)."""


class Deferred:
    """One batch's sends on one channel, sent in one pipeline by the batch's ``before_ack``.

    Each command gets its own reply: when some fail, the batch learns which messages they
    were sent for (``Batch.unsent``), and those that went out are not sent again.
    """

    def __init__(self, link: Link, batch: Batch) -> None:
        self.link = link
        self.queued: list[Send] = []
        self._batch = weakref.ref(batch)  # the channel's map of batches holds them weakly

    @property
    def batch(self) -> Batch:
        batch = self._batch()
        assert batch is not None, "a batch outlives its before_ack callbacks"
        return batch

    def add(self, command: Command) -> None:
        """Queue ``command``, tagged with the batch's message in hand."""
        self.queued.append((self.batch.current, command))

    def before_ack(self) -> Awaitable[None] | None:
        """The batch's ``before_ack`` callback: sends what is queued in sync code, else returns
        the awaitable that does."""
        sends, self.queued = self.queued, []
        if not sends:
            return None
        commands = [command for _, command in sends]
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # a sync consumer's batch
            self._settle(sends, self.link.replies(commands))
            return None
        return self._asend(sends, commands)

    async def _asend(self, sends: list[Send], commands: list[Command]) -> None:
        self._settle(sends, await self.link.areplies(commands))

    def _settle(self, sends: list[Send], replies: list[Any]) -> None:
        failures = [
            (source, reply)
            for (source, _), reply in zip(sends, replies, strict=True)
            if isinstance(reply, Exception)
        ]
        if failures:
            raise self.batch.unsent(failures)
