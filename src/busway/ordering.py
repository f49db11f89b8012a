"""Order and precedence of messages: ordering keys and priorities.

Messages that carry the same ordering key are handled one at a time, in the order they were
sent, by however many workers; messages of different keys run side by side. A key is given
per send (``bus.send(command, ordering_key=...)``) or declared once for a payload type with
``@ordered_by``: the name of one of its fields, or a function of the payload.

A priority is an integer from 0 (the default) to ``MAX_PRIORITY``: among the ready messages
of a channel that keeps priorities (``SqlChannel(priorities=True)``,
``AmqpChannel(priorities=True)``), higher ones are taken first; equal ones stay in the order
they were sent. It is given per send (``priority=``) or for a whole bus (``@priority(n)`` on
the bus class). An ordering key wins over a priority: a message never overtakes an earlier
one of its key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

MAX_PRIORITY = 9
"""The highest priority: RabbitMQ advises against more than ten levels, and SQL channels keep
the same bound so a message means the same on either."""

LONGEST_KEY = 190
"""Keys up to this length are stored as they are; longer ones by a digest of them."""

ORDERED_BY_MARK = "__busway_ordered_by__"
PRIORITY_MARK = "__busway_priority__"

KeyOf = Callable[[Any], Any]


def ordered_by(key: str | KeyOf) -> Callable[[type[T]], type[T]]:
    """Declare the ordering key of every message of a payload type: the name of one of its
    fields (``@ordered_by("order_id")``), or a function of the payload
    (``@ordered_by(lambda event: f"{event.shop}/{event.order_id}")``).

    A key given at the send (``ordering_key=``) wins over the declared one.
    """
    key_of: KeyOf
    if isinstance(key, str):
        if not key.isidentifier():
            raise ValueError(f"@ordered_by takes a field name or a function, not {key!r}")
        field = key

        def field_of(payload: Any) -> Any:
            try:
                return getattr(payload, field)
            except AttributeError:
                raise TypeError(
                    f"@ordered_by({field!r}) on {type(payload).__qualname__}: this payload has "
                    f"no field {field!r} to take its ordering key from; name one of its "
                    "fields, or give a function of the payload"
                ) from None

        field_of.__qualname__ = f"ordered_by({field!r})"
        key_of = field_of
    elif callable(key):
        key_of = key
    else:
        raise TypeError(f"@ordered_by takes a field name or a function, not {key!r}")

    def mark(cls: type[T]) -> type[T]:
        if not isinstance(cls, type):
            raise TypeError(f"@ordered_by marks a payload class, not {cls!r}")
        if isinstance(key, str):
            _check_field(cls, key)
        setattr(cls, ORDERED_BY_MARK, key_of)
        return cls

    return mark


def _check_field(cls: type[Any], field: str) -> None:
    """Refuse ``@ordered_by(field)`` on a class that declares its fields (annotations, as
    dataclasses, attrs, pydantic and msgspec classes do) without that one."""
    declared: set[str] = set()
    for klass in cls.__mro__:
        declared.update(vars(klass).get("__annotations__", {}))
    declared.update(getattr(cls, "model_fields", None) or {})  # pydantic, set after the class
    if not declared or field in declared or hasattr(cls, field):
        return
    raise TypeError(
        f"@ordered_by({field!r}) on {cls.__qualname__}: it has no field {field!r}; name one "
        f"of its fields ({', '.join(sorted(declared))}), or give a function of the payload"
    )


def declared_key(payload_type: type[Any]) -> KeyOf | None:
    """The function that gives a payload's ordering key, if its type declares one."""
    found = getattr(payload_type, ORDERED_BY_MARK, None)
    return found if callable(found) else None


def ordering_key_value(key: Any) -> str | None:
    """An ordering key as messages carry it: text; None for no key."""
    if key is None:
        return None
    if isinstance(key, bool) or not isinstance(key, str | int):
        raise TypeError(
            f"an ordering key is a str or an int, not {type(key).__name__} ({key!r}); give "
            "the id of the thing whose messages must stay in order"
        )
    text = str(key)
    if not text:
        raise ValueError("an ordering key cannot be empty; pass None for no key")
    return text


def stored_key(key: object) -> str | None:
    """The ordering key a message carries, as a channel keeps it: short enough for an index
    (a longer key is kept as a digest of itself); None when the message has none."""
    if not isinstance(key, str) or not key:
        return None
    if len(key) <= LONGEST_KEY:
        return key
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def priority(level: int) -> Callable[[T], T]:
    """Give every message sent through a bus class a priority, from 0 to ``MAX_PRIORITY``;
    a ``priority=`` given at the send wins."""
    checked = priority_value(level)

    def mark(target: T) -> T:
        setattr(target, PRIORITY_MARK, checked)
        return target

    return mark


def marked_priority(target: object) -> int | None:
    level = getattr(target, PRIORITY_MARK, None)
    return level if isinstance(level, int) else None


def priority_value(level: object) -> int:
    """A priority, checked: an integer from 0 to ``MAX_PRIORITY``."""
    if isinstance(level, bool) or not isinstance(level, int):
        raise TypeError(f"a priority is an integer from 0 to {MAX_PRIORITY}, not {level!r}")
    if not 0 <= level <= MAX_PRIORITY:
        raise ValueError(f"a priority is an integer from 0 to {MAX_PRIORITY}, not {level}")
    return level


def priority_of(value: object) -> int:
    """The priority a message carries: 0 when it has none or an unreadable one, and never
    beyond the bounds."""
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return min(max(value, 0), MAX_PRIORITY)


@dataclass(frozen=True, slots=True)
class BlockedKey:
    """An ordering key held back on a channel by its dead letters: the later messages of the
    key wait there until each letter is replayed (and its message then handled) or skipped.
    ``waiting`` counts them, None where the channel cannot tell."""

    channel: str
    ordering_key: str
    letters: tuple[str, ...]
    waiting: int | None
