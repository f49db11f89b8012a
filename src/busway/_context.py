"""The message being handled right now, carried by a context variable.

Context variables follow asyncio tasks and ``contextvars.copy_context()`` runs, so headers
propagate through sync calls, tasks and the worker's threads alike.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from busway.message import Message

current_message: ContextVar[Message[Any] | None] = ContextVar("busway_message", default=None)
