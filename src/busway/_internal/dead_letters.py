"""``messaging.dead_letters``: the dead letter store of an application, with replay."""

from __future__ import annotations

import builtins
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from busway._internal.runtime import Runtime
from busway.channels.base import Envelope
from busway.channels.reading import raw_of, readable
from busway.message import ATTEMPT, DELIVER_AT, EXPIRES_AT, ORDERING_KEY, POSITION, TARGET
from busway.ordering import BlockedKey
from busway.recovery import DeadLetter, DeadLetterStore

log = logging.getLogger("busway")


class DeadLetters:
    """Operating the dead letter store: list, show, replay, delete."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    @property
    def store(self) -> DeadLetterStore:
        self._runtime.preparation.sql()
        return self._runtime.dead_letters

    def list(
        self,
        *,
        channel: str | None = None,
        handler: str | None = None,
        error_type: str | None = None,
        since: float | None = None,
    ) -> list[DeadLetter]:
        """Dead letters, oldest first; ``error_type`` matches the full or the short class
        name, ``since`` keeps those that failed within that many seconds."""
        letters = self.store.list(channel=channel, handler=handler)
        if error_type is not None:
            letters = [
                letter
                for letter in letters
                if letter.error_type == error_type or letter.error_type.endswith("." + error_type)
            ]
        if since is not None:
            oldest = self._runtime.clock() - since
            letters = [letter for letter in letters if letter.failed_at >= oldest]
        return sorted(letters, key=lambda letter: letter.failed_at)

    def get(self, letter_id: str) -> DeadLetter | None:
        return self.store.get(letter_id)

    def replay(self, letter_ids: Iterable[str]) -> int:
        """Send each letter back to its channel, addressed to the handler that failed it.

        A letter of a message whose headers could not be read is sent with those headers
        once they can be read, and kept until then (see ``unreadable``)."""
        replayed = 0
        for letter_id in letter_ids:
            letter = self.store.get(letter_id)
            if letter is None:
                continue
            original = _original_headers(letter)
            if original is None:
                log.warning(
                    "dead letter %s kept: the headers of its message still cannot be read; "
                    "fix them in the letter, or delete it",
                    letter.id,
                )
                continue
            headers = {
                key: value
                for key, value in original.items()
                if key not in (ATTEMPT, DELIVER_AT, EXPIRES_AT)
            }
            for kept in (ORDERING_KEY, POSITION):  # beside headers once unreadable
                if kept not in headers and kept in letter.headers:
                    headers[kept] = letter.headers[kept]
            if letter.handler is not None:
                headers[TARGET] = letter.handler
            self._runtime.send(letter.channel, Envelope(letter.body, headers))
            self.store.delete([letter.id])
            replayed += 1
        return replayed

    def unreadable(self, letter: DeadLetter) -> bool:
        """Whether ``letter`` keeps the headers of a message that still cannot be read: then
        ``replay`` keeps it."""
        return _original_headers(letter) is None

    def delete(self, letter_ids: Iterable[str]) -> int:
        """Delete letters for good; a letter of a keyed message no longer holds its key back."""
        return self.store.delete(letter_ids)

    def skip(self, letter_ids: Iterable[str]) -> int:
        """Give up the messages of these letters: the later messages of their keys go on.
        The same as ``delete``, by the name it has for a key held back."""
        return self.delete(letter_ids)

    def blocked(self, *, channel: str | None = None) -> builtins.list[BlockedKey]:
        """The ordering keys that dead letters hold back, with how many messages wait behind
        each, oldest letter first."""
        letters: dict[tuple[str, str], list[str]] = {}
        for letter in self.list(channel=channel):
            key = letter.headers.get(ORDERING_KEY)
            if isinstance(key, str):
                letters.setdefault((letter.channel, key), []).append(letter.id)
        found = []
        for (name, key), ids in letters.items():
            held = self._runtime.channels.get(name)
            waiting = held.waiting(key) if held is not None else None
            found.append(BlockedKey(name, key, tuple(ids), waiting))
        return found


def _original_headers(letter: DeadLetter) -> Mapping[str, Any] | None:
    """The headers to replay a letter with; None while its message's cannot be read."""
    raw = raw_of(letter.headers)
    return letter.headers if raw is None else readable(raw)
