"""The workers page: the place of the live workers, once workers record heartbeats.

The page exists so that the navigation and the links stay put; ``worker_rows`` is where the
heartbeats will be read (host, pid, channels, started, last beat, handled and failed counts,
and which workers fell silent). Until then it returns nothing and the page says so.
"""

from __future__ import annotations

from typing import Any

from busway.messaging import Messaging

AVAILABLE = False
"""Whether this version of busway records worker heartbeats."""


def worker_rows(messaging: Messaging) -> list[Any]:
    """The workers that recorded a heartbeat; none until heartbeats are recorded."""
    return []
