"""Redis Streams: ``RedisChannel``. Needs the extra: ``pip install 'busway[redis]'``."""

from __future__ import annotations

from busway.channels.redis import RedisChannel

__all__ = ["RedisChannel"]
