"""The dead letters pages: filters, one letter in full, and replaying or deleting them through
``messaging.dead_letters``, the API ``busway dead-letter`` uses."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from urllib.parse import urlencode

from busway.messaging import Messaging
from busway.recovery import DeadLetter

AGES: dict[str, float] = {"15m": 900, "1h": 3600, "24h": 86400, "7d": 7 * 86400}
"""The choices of the age filter: letters that failed within that long."""
SHOWN = 500
"""At most this many letters are listed on one page; the filters narrow them down."""


@dataclass(frozen=True, slots=True)
class Filters:
    channel: str = ""
    handler: str = ""
    error: str = ""
    within: str = ""
    """A key of ``AGES``, or empty for any age."""

    @classmethod
    def of(cls, values: Mapping[str, object]) -> Filters:
        def text(name: str) -> str:
            value = values.get(name)
            return value.strip() if isinstance(value, str) else ""

        within = text("within")
        return cls(text("channel"), text("handler"), text("error"), within * (within in AGES))

    def select(self, messaging: Messaging) -> list[DeadLetter]:
        return messaging.dead_letters.list(
            channel=self.channel or None,
            handler=self.handler or None,
            error_type=self.error or None,
            since=AGES.get(self.within),
        )

    @property
    def active(self) -> bool:
        return any(asdict(self).values())

    def query(self, **more: object) -> str:
        """The query string of these filters (and ``more``), without empty values."""
        values = {**asdict(self), **more}
        return urlencode({key: value for key, value in values.items() if value not in ("", 0)})


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a replay or a delete did, carried to the next page in its query string."""

    replayed: int = 0
    deleted: int = 0
    kept: int = 0
    """Letters kept because their message's headers still cannot be read."""
    missing: int = 0
    """Ids that matched no letter (replayed or deleted meanwhile)."""

    @classmethod
    def of(cls, values: Mapping[str, str]) -> Outcome | None:
        counts = {name: _count(values.get(name)) for name in ("replayed", "deleted", "kept")}
        counts["missing"] = _count(values.get("missing"))
        return cls(**counts) if any(counts.values()) or "done" in values else None

    def query(self) -> dict[str, int]:
        return {"done": 1, **asdict(self)}


def replay(messaging: Messaging, ids: Sequence[str]) -> Outcome:
    letters = [messaging.dead_letters.get(letter_id) for letter_id in ids]
    kept = sum(
        letter is not None and messaging.dead_letters.unreadable(letter) for letter in letters
    )
    replayed = messaging.dead_letters.replay(ids)
    return Outcome(replayed=replayed, kept=kept, missing=len(ids) - replayed - kept)


def delete(messaging: Messaging, ids: Sequence[str]) -> Outcome:
    deleted = messaging.dead_letters.delete(ids)
    return Outcome(deleted=deleted, missing=len(ids) - deleted)


def error_summary(letter: DeadLetter) -> str:
    lines = letter.error_message.strip().splitlines()
    text = f"{letter.error_type.rpartition('.')[2]}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= 120 else text[:117] + "..."


def body_text(body: bytes) -> str:
    """The body for people: indented JSON, else text, else the bytes' repr."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return repr(body)
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


def header_text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _count(value: str | None) -> int:
    return int(value) if value is not None and value.isdigit() else 0
