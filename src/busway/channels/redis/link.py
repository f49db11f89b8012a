"""The redis-py clients of a Redis channel: the sync and asyncio edges every command goes
through."""

from __future__ import annotations

from busway.channels.redis._async.commands import AsyncCommands
from busway.channels.redis._sync.commands import Commands


class Link(Commands, AsyncCommands):
    """A Redis channel's clients and the commands run on them, sync and asyncio."""
