"""Sends made while a consumer hands out a batch: they go out together, before its ack."""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from busway.channels.base import Batch
from busway.channels.redis.link import Link
from busway.channels.redis.stream import Command


class Deferred:
    """The commands each batch in hand has sent so far, sent in one pipeline by the batch's
    ``before_ack``."""

    def __init__(self, link: Link) -> None:
        self._link = link
        self._unsent: weakref.WeakKeyDictionary[Batch, list[Command]] = weakref.WeakKeyDictionary()

    def add(self, batch: Batch, command: Command) -> None:
        unsent = self._unsent.get(batch)
        if unsent is None:
            unsent = self._unsent[batch] = []
            batch.before_ack.append(lambda: self._flush(unsent))
        unsent.append(command)

    def _flush(self, unsent: list[Command]) -> Any:
        """Send ``unsent`` now, or return the awaitable that does, on an asyncio consumer."""
        commands, unsent[:] = list(unsent), []
        if not commands:
            return None
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # a sync consumer's batch
            self._link.pipeline(commands)
            return None
        return self._link.apipeline(commands)
