"""What happens to a message whose handler failed: retry it later, or keep it as a dead letter."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import msgspec

from busway.message import HeaderValue, qualified_name, uuid7


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Instant retries, then delayed retries with exponential back-off, jitter and a cap.

    A failed handler is first tried again at once, up to ``instant_retries`` times, each in a
    fresh transaction. If it still fails, the message goes back to its channel for a delayed
    retry: the n-th (n = 1, 2, ...) waits ``min(max_delay, initial_delay * multiplier**(n-1))``
    seconds, give or take ``jitter`` of that, never more than ``max_delay``. A handler runs at
    most ``(1 + instant_retries) * (1 + retries)`` times. Only errors of ``retry_on`` types are
    retried; anything else, and a message out of retries, goes to the dead letter store. The
    attempt count travels in the message's headers, not in a worker's memory.
    """

    retries: int = 3
    initial_delay: float = 1.0
    multiplier: float = 2.0
    max_delay: float = 60.0
    jitter: float = 0.1
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    instant_retries: int = 0
    retry_on_names: tuple[str, ...] = ()
    """``retry_on`` as qualified class names: how a policy travels in a message's headers."""

    def __post_init__(self) -> None:
        if self.retries < 0 or self.instant_retries < 0:
            raise ValueError("RetryPolicy needs retries and instant_retries >= 0")
        if self.initial_delay < 0 or self.max_delay < 0 or self.multiplier < 1:
            raise ValueError(
                "RetryPolicy needs initial_delay and max_delay >= 0 and multiplier >= 1"
            )
        if not 0 <= self.jitter <= 1:
            raise ValueError("RetryPolicy.jitter is a fraction between 0 and 1")
        retry_on = self.retry_on
        if isinstance(retry_on, type):
            retry_on = (retry_on,)
        retry_on = tuple(retry_on)  # a list is as good as a tuple
        if not all(isinstance(cls, type) and issubclass(cls, BaseException) for cls in retry_on):
            raise TypeError(
                f"RetryPolicy.retry_on takes exception classes, not {self.retry_on!r}; "
                "pass e.g. retry_on=(TimeoutError, ConnectionError)"
            )
        object.__setattr__(self, "retry_on", retry_on)
        if not self.retry_on_names:
            names = tuple(_qualified(cls) for cls in self.retry_on)
            object.__setattr__(self, "retry_on_names", names)

    def retries_error(self, error: BaseException) -> bool:
        """Whether errors like ``error`` are retried at all."""
        if isinstance(error, self.retry_on):
            return True
        names = set(self.retry_on_names)
        return any(_qualified(cls) in names for cls in type(error).__mro__)

    def should_retry(self, attempt: int, error: BaseException) -> bool:
        """Whether a message that failed on its ``attempt``-th try (1-based) is tried again."""
        return attempt <= self.retries and self.retries_error(error)

    def base_delay(self, retry: int) -> float:
        """The delay before the ``retry``-th retry, without jitter."""
        return min(self.max_delay, self.initial_delay * self.multiplier ** (retry - 1))

    def delay(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        base = self.base_delay(retry)
        return min(self.max_delay, max(0.0, base + base * self.jitter * (2 * rand() - 1)))

    def describe(self) -> str:
        """One line for people: what this policy does."""
        delays = ", ".join(f"{self.base_delay(n):g}s" for n in range(1, self.retries + 1))
        errors = ", ".join(name.rsplit(".", 1)[-1] for name in self.retry_on_names)
        return (
            f"{self.instant_retries} instant, {self.retries} delayed"
            + (f" ({delays}, jitter {self.jitter:.0%})" if self.retries else "")
            + f", on {errors}"
        )

    def to_header(self) -> str:
        return msgspec.json.encode(
            {
                "retries": self.retries,
                "initial_delay": self.initial_delay,
                "multiplier": self.multiplier,
                "max_delay": self.max_delay,
                "jitter": self.jitter,
                "instant_retries": self.instant_retries,
                "retry_on": list(self.retry_on_names),
            }
        ).decode()

    @classmethod
    def from_header(cls, value: object) -> RetryPolicy | None:
        """The policy a message carries, or None if the header is missing or unreadable."""
        if not isinstance(value, str):
            return None
        try:
            data = msgspec.json.decode(value, type=_PolicyHeader)
            return cls(
                retries=data.retries,
                initial_delay=data.initial_delay,
                multiplier=data.multiplier,
                max_delay=data.max_delay,
                jitter=data.jitter,
                instant_retries=data.instant_retries,
                retry_on=(),
                retry_on_names=tuple(data.retry_on),
            )
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
            return None


def most_specific_policy(
    default: RetryPolicy,
    handler: RetryPolicy | None,
    carried: object = None,
    channel: RetryPolicy | None = None,
) -> RetryPolicy:
    """The policy a failure follows: the handler's own, then the bus's (``carried`` by the
    message, its ``busway.retry`` header), then the channel's, then ``default``."""
    if handler is not None:
        return handler
    return RetryPolicy.from_header(carried) or channel or default


class _PolicyHeader(msgspec.Struct):
    retries: int
    initial_delay: float
    multiplier: float
    max_delay: float
    jitter: float
    instant_retries: int
    retry_on: list[str]


def _qualified(cls: type) -> str:
    return qualified_name(cls)


RETRY_MARK = "__busway_retry__"
T = TypeVar("T")


def retry_policy(policy: RetryPolicy) -> Callable[[T], T]:
    """Give a handler, or a bus class, its own retry policy.

    The most specific policy wins: the handler's, then the bus's the message was sent
    through, then the channel's (``Messaging(channel_retries={...})``), then
    ``Messaging(retry=...)``.
    """

    def mark(target: T) -> T:
        setattr(target, RETRY_MARK, policy)
        return target

    return mark


def marked_policy(target: object) -> RetryPolicy | None:
    policy = getattr(target, RETRY_MARK, None)
    return policy if isinstance(policy, RetryPolicy) else None


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
