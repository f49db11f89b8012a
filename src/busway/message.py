"""Messages: a payload and its read-only headers."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from random import getrandbits
from typing import Generic, TypeVar

HeaderValue = str | int | float | bool | None

ID = "id"
CORRELATION_ID = "correlation_id"
CAUSATION_ID = "causation_id"
TIMESTAMP = "timestamp"
TYPE = "type"
CONTENT_TYPE = "content_type"

# Headers busway keeps for itself, under one prefix so they never clash with a user's.
KIND = "busway.kind"
ROUTE = "busway.route"
SLIP = "busway.slip"
TARGET = "busway.handler"
ATTEMPT = "busway.attempt"
DELIVER_AT = "busway.deliver_at"
EXPIRES_AT = "busway.expires_at"
RETRY = "busway.retry"
TIMEOUT = "busway.timeout"
ORDERING_KEY = "busway.ordering_key"
PRIORITY = "busway.priority"
POSITION = "busway.position"

WELL_KNOWN = (ID, CORRELATION_ID, CAUSATION_ID, TIMESTAMP, TYPE, CONTENT_TYPE)
INTERNAL_PREFIX = "busway."

_uuid7_lock = threading.Lock()
_uuid7_last = 0
# The text of the last millisecond an id was made in, which the ids made in it share; one
# tuple, so a thread reads a millisecond and its text together.
_uuid7_prefix = (-1, "")


def uuid7() -> str:
    """A time-ordered UUID (RFC 9562, version 7), strictly increasing within this process."""
    global _uuid7_last, _uuid7_prefix
    with _uuid7_lock:
        # 48 bits of milliseconds, then 12 bits of sub-millisecond sequence: ids made in one
        # process always sort in the order they were made.
        now = time.time_ns() // 1_000_000 << 12
        _uuid7_last = now if now > _uuid7_last else _uuid7_last + 1
        stamp = _uuid7_last
    milliseconds, prefix = _uuid7_prefix
    if milliseconds != stamp >> 12:
        milliseconds = stamp >> 12
        prefix = "%08x-%04x-" % (milliseconds >> 16, milliseconds & 0xFFFF)  # noqa: UP031
        _uuid7_prefix = (milliseconds, prefix)
    # The variant (0b10), then 62 random bits, as "vrrr-rrrrrrrrrrrr". The random module
    # reseeds itself in a forked child, so processes never share a stream.
    rest = (1 << 63 | getrandbits(62)).to_bytes(8).hex("-", 6)
    # Version 7, then the sequence: always four digits. %-formatting takes half the time of
    # an f-string here.
    return "%s%x-%s" % (prefix, 0x7000 | stamp & 0xFFF, rest)  # noqa: UP031


class Headers(Mapping[str, HeaderValue]):
    """A read-only mapping of a message's headers.

    Well-known keys: ``id``, ``correlation_id``, ``causation_id``, ``timestamp``, ``type``,
    ``content_type``; user headers sit under their own keys, busway's own under ``busway.``.
    """

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, HeaderValue] | None = None) -> None:
        self._data: dict[str, HeaderValue] = dict(data) if data else {}

    @classmethod
    def _owning(cls, data: dict[str, HeaderValue]) -> Headers:
        """Headers over ``data`` itself, not a copy: its maker hands it over and never
        changes it again."""
        headers = cls.__new__(cls)
        headers._data = data
        return headers

    def __getitem__(self, key: str) -> HeaderValue:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"Headers({self._data!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self._data == dict(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._data.items(), key=lambda item: item[0])))

    def replace(self, **changes: HeaderValue) -> Headers:
        """A copy with some keys changed; a value of ``None`` removes the key."""
        return self.merge(changes)

    def merge(self, changes: Mapping[str, HeaderValue]) -> Headers:
        """A copy with ``changes`` applied; a value of ``None`` removes the key."""
        return Headers._owning(self.as_dict(changes))

    def as_dict(self, changes: Mapping[str, HeaderValue] | None = None) -> dict[str, HeaderValue]:
        """A plain dict of the headers, with ``changes`` applied as in ``merge``."""
        data = dict(self._data)
        if changes:
            for key, value in changes.items():
                if value is None:
                    data.pop(key, None)
                else:
                    data[key] = value
        return data

    def user_headers(self) -> dict[str, HeaderValue]:
        """The headers a user gave, which travel on to every message sent while handling."""
        return {
            key: value
            for key, value in self._data.items()
            if key not in WELL_KNOWN and not key.startswith(INTERNAL_PREFIX)
        }

    @property
    def id(self) -> str:
        return str(self._data[ID])

    @property
    def correlation_id(self) -> str:
        return str(self._data[CORRELATION_ID])

    @property
    def causation_id(self) -> str | None:
        value = self._data.get(CAUSATION_ID)
        return None if value is None else str(value)

    @property
    def timestamp(self) -> float:
        value = self._data[TIMESTAMP]
        assert isinstance(value, int | float)
        return float(value)

    @property
    def type(self) -> str:
        return str(self._data[TYPE])

    @property
    def content_type(self) -> str:
        return str(self._data[CONTENT_TYPE])

    @property
    def attempt(self) -> int:
        """How many times this message has been tried before, 0 on the first delivery."""
        value = self._data.get(ATTEMPT, 0)
        if not isinstance(value, int | float | str):
            return 0
        try:
            return int(value)
        except (ValueError, OverflowError):  # a malformed header: not a count
            return 0


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Message(Generic[T]):
    """A payload with its headers."""

    payload: T
    headers: Headers

    @property
    def id(self) -> str:
        return self.headers.id


def qualified_name(thing: type[object] | Callable[..., object]) -> str:
    """``module.QualName`` of a class or function, as another process importing it sees it.

    Defined in a script run as ``python orders.py`` (or ``python -m shop.orders``), a class's
    module is ``__main__``; a worker that imports the script knows it as ``orders`` (or
    ``shop.orders``). Both name it after the script, so messages and handlers match.
    """
    module = thing.__module__
    if module == "__main__":
        module = _main_module_name()
    return f"{module}.{thing.__qualname__}"


def _main_module_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", None)
    if isinstance(name, str) and name and name != "__main__":
        return name
    path = getattr(main, "__file__", None)
    if isinstance(path, str) and path.endswith(".py"):
        return os.path.basename(path)[: -len(".py")]
    return "__main__"
