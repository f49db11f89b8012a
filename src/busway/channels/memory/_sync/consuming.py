# Generated from src/busway/channels/memory/_async/consuming.py by tools/unasync.py: do not edit.
# Change the asyncio source, then run `make generate`.
"""How an in-memory channel hands out what it holds: one message at a time, the first one
waited for at most ``wait`` seconds, each given back if its handling raised."""

from __future__ import annotations

from typing import TYPE_CHECKING

from busway.channels.base import Handle, MessageReturned

if TYPE_CHECKING:
    from busway.channels.memory import InMemoryChannel


def consume(channel: InMemoryChannel, handle: Handle, max_messages: int, wait: float) -> int:
    handled = 0
    while handled < max_messages:
        stored = channel.taken(wait if handled == 0 else 0.0)
        if stored is None:
            break
        try:
            handle(channel.delivery(stored))
        except MessageReturned:
            channel.give_back(stored)
            break
        except BaseException:
            channel.give_back(stored)
            raise
        handled += 1
    return handled
