"""What consuming one Redis channel needs, made once it is attached: the consuming functions
(``busway.channels.redis._async.consuming``) take this, not the channel."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from busway.channels.redis.link import Link
from busway.channels.redis.stream import Stream


@dataclass(frozen=True, slots=True)
class RedisConsumer:
    name: str
    link: Link
    stream: Stream
    clock: Callable[[], float]
    batch_size: int
