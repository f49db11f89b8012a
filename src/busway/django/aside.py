"""Connections beside Django's, for what busway commits outside the transaction it is in.

A worker notes the messages it takes in hand (the crash-loop guard) on a connection of its own
that commits at once, so that the note outlives a worker killed with its batch uncommitted.
Under Django, the batch's transaction is an ``atomic()`` block busway opened on Django's
connection; the note goes to a second connection of the same alias, made by Django's backend
for the block and closed with it.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

_local = threading.local()


def _state() -> tuple[set[str], dict[str, Any]]:
    if not hasattr(_local, "owned"):
        _local.owned = set()
        _local.connections = {}
    return _local.owned, _local.connections


def opened_by_busway(alias: str, opened: bool) -> None:
    """Note that busway opened (or closed) the outermost ``atomic()`` block on ``alias``; the
    connection beside it, if one was made, closes with it."""
    owned, _ = _state()
    if opened:
        owned.add(alias)
    else:
        owned.discard(alias)
        forget(alias)


def in_busway_block(alias: str) -> bool:
    """Whether the outermost ``atomic()`` block open on ``alias`` is busway's (a worker's
    batch, a handler's transaction), not the application's."""
    return alias in _state()[0]


def connection_beside(wrapper: Any) -> Any:
    """The thread's second driver connection to the database of ``wrapper``."""
    _, made = _state()
    found = made.get(wrapper.alias)
    if found is None:
        found = made[wrapper.alias] = wrapper.get_new_connection(wrapper.get_connection_params())
    return found


def forget(alias: str) -> None:
    """Close the thread's second connection to ``alias``, if it has one: the next is new."""
    _, made = _state()
    found = made.pop(alias, None)
    if found is not None:
        with contextlib.suppress(Exception):  # closing a broken connection may fail too
            found.close()
