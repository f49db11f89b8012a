"""The handlers page: what each handler takes, where it runs, and the retry policy its
failures follow, as ``busway handlers`` tells them."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from busway.messaging import Messaging


@dataclass(frozen=True, slots=True)
class HandlerRow:
    name: str
    kind: str
    takes: str
    channels: tuple[str, ...]
    policies: tuple[tuple[str, str], ...]
    """(where, policy): the policy by default, then that of each channel that sets another."""
    timeout: float | None
    dead_letters: int


def handler_rows(messaging: Messaging) -> list[HandlerRow]:
    letters = Counter(letter.handler for letter in messaging.dead_letters.list())
    rows = []
    for info in messaging.handlers:
        takes = info.key or (info.payload_type.__qualname__ if info.payload_type else "?")
        default = messaging.retry_policy_for(info)
        policies = [("by default", default.describe())]
        for channel in messaging.channels:
            policy = messaging.retry_policy_for(info, channel)
            if policy != default:
                policies.append((f"on {channel}", policy.describe()))
        rows.append(
            HandlerRow(
                info.name,
                info.kind.value,
                takes,
                info.channels,
                tuple(policies),
                info.timeout,
                letters[info.name],
            )
        )
    return rows
