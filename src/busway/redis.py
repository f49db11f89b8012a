"""Redis Streams: ``RedisChannel``, from its one public import path.

Needs the extra: ``pip install 'busway[redis]'``. The channel lives in
``busway.channels.redis``, which is internal.
"""

from busway.channels.redis import RedisChannel

__all__ = ["RedisChannel"]
