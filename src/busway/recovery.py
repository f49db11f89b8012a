"""What happens to a message whose handler failed: retry it later, or keep it as a dead letter."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from busway.message import HeaderValue, uuid7


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Delayed retries with exponential back-off, jitter and a cap.

    The n-th retry (n = 1, 2, ...) waits ``min(max_delay, initial_delay * multiplier**(n-1))``
    seconds, then up to ``jitter`` of that more or less. Only errors of ``retry_on`` types are
    retried; anything else, and a message out of retries, goes to the dead letter store.
    The attempt count travels in the message's headers, not in a worker's memory.
    """

    retries: int = 3
    initial_delay: float = 1.0
    multiplier: float = 2.0
    max_delay: float = 60.0
    jitter: float = 0.1
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if self.retries < 0 or self.initial_delay < 0 or self.max_delay < 0:
            raise ValueError("RetryPolicy needs retries, initial_delay and max_delay >= 0")
        if not 0 <= self.jitter <= 1:
            raise ValueError("RetryPolicy.jitter is a fraction between 0 and 1")

    def should_retry(self, attempt: int, error: BaseException) -> bool:
        """Whether a message that failed on its ``attempt``-th try (1-based) is tried again."""
        return attempt <= self.retries and isinstance(error, self.retry_on)

    def base_delay(self, retry: int) -> float:
        """The delay before the ``retry``-th retry, without jitter."""
        return min(self.max_delay, self.initial_delay * self.multiplier ** (retry - 1))

    def delay(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        base = self.base_delay(retry)
        return max(0.0, base + base * self.jitter * (2 * rand() - 1))


NO_RETRIES = RetryPolicy(retries=0)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message kept after its handling failed for good, with why."""

    id: str
    channel: str
    handler: str | None
    body: bytes
    headers: Mapping[str, HeaderValue]
    error_type: str
    error_message: str
    traceback: str
    attempts: int
    failed_at: float = field(default_factory=time.time)

    @property
    def message_id(self) -> str | None:
        value = self.headers.get("id")
        return None if value is None else str(value)


def new_dead_letter_id() -> str:
    return uuid7()


class DeadLetterStore(Protocol):
    """Where dead letters are kept until someone replays or deletes them."""

    def add(self, letter: DeadLetter) -> None: ...

    async def aadd(self, letter: DeadLetter) -> None: ...

    def list(
        self, *, channel: str | None = None, handler: str | None = None
    ) -> list[DeadLetter]: ...

    def get(self, letter_id: str) -> DeadLetter | None: ...

    def delete(self, letter_ids: Iterable[str]) -> int: ...


class InMemoryDeadLetterStore:
    """Dead letters in this process's memory: for tests and applications without a database."""

    def __init__(self) -> None:
        self._letters: dict[str, DeadLetter] = {}
        self._lock = threading.Lock()

    def add(self, letter: DeadLetter) -> None:
        with self._lock:
            self._letters[letter.id] = letter

    async def aadd(self, letter: DeadLetter) -> None:
        self.add(letter)

    def list(self, *, channel: str | None = None, handler: str | None = None) -> list[DeadLetter]:
        with self._lock:
            letters = list(self._letters.values())
        return [
            letter
            for letter in letters
            if (channel is None or letter.channel == channel)
            and (handler is None or letter.handler == handler)
        ]

    def get(self, letter_id: str) -> DeadLetter | None:
        with self._lock:
            return self._letters.get(letter_id)

    def delete(self, letter_ids: Iterable[str]) -> int:
        with self._lock:
            return sum(self._letters.pop(i, None) is not None for i in letter_ids)

    def __len__(self) -> int:
        return len(self._letters)


def describe_payload(payload: Any) -> str:
    text = repr(payload)
    return text if len(text) <= 200 else text[:197] + "..."
