"""Every error busway raises, each naming the thing, the problem and the fix."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager


class BuswayError(Exception):
    """Base class of busway's errors."""


class ConfigurationError(BuswayError):
    """The messaging configuration is wrong; raised by ``Messaging(...)`` at start-up.

    Holds every problem found, one readable sentence each, in ``problems``.
    """

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems: tuple[str, ...] = (
            (problems,) if isinstance(problems, str) else tuple(problems)
        )
        if len(self.problems) == 1:
            text = self.problems[0]
        else:
            lines = "\n".join(f"  - {problem}" for problem in self.problems)
            text = f"{len(self.problems)} problems in the messaging configuration:\n{lines}"
        super().__init__(text)


class MissingExtraError(BuswayError, ImportError):
    """An optional dependency is not installed."""

    def __init__(self, feature: str, extra: str) -> None:
        super().__init__(
            f"{feature} needs an optional dependency that is not installed; "
            f"install it with: pip install 'busway[{extra}]'"
        )


@contextmanager
def extra_required(feature: str, extra: str) -> Iterator[None]:
    """Turn an ``ImportError`` of the imports inside into a ``MissingExtraError``."""
    try:
        yield
    except ImportError as error:
        raise MissingExtraError(feature, extra) from error


class NoHandlerError(BuswayError, LookupError):
    """A command or query was sent that no handler takes."""


class ConversionError(BuswayError, ValueError):
    """A payload could not be turned into bytes, or bytes back into a payload."""


class MalformedMessageError(BuswayError, ValueError):
    """A message read from a channel is not one busway can dispatch."""


class UnreadableMessageError(MalformedMessageError):
    """A channel holds a message it cannot read; it goes to the dead letter store as it came."""

    def __init__(self, channel: str, reason: str) -> None:
        super().__init__(
            f"a message on channel {channel!r} cannot be read: {reason}; the dead letter keeps "
            "its body and its raw headers (header 'busway.raw_headers' or "
            "'busway.raw_headers_base64'): replay it once they can be read, or delete it"
        )


class WorkerDiedError(BuswayError):
    """Workers died (``os._exit``, a segfault, the out-of-memory killer) while a message was
    in hand, as many times as ``Messaging(max_crashes=...)`` allows: it is dead-lettered with
    this error instead of being handed out again."""

    def __init__(self, crashes: int) -> None:
        super().__init__(
            f"the worker died {crashes} times handling it: a handler may kill the process "
            "(os._exit, a crash in native code, the memory limit); fix it, then replay the "
            "dead letter"
        )
        self.crashes = crashes


class UnknownChannelError(BuswayError, LookupError):
    """A channel name that the configuration does not define."""


class HandlerTimeout(BuswayError, TimeoutError):
    """A handler ran past its time limit; counted as a failure of that handling."""

    def __init__(self, handler: str, limit: float) -> None:
        super().__init__(
            f"handler {handler} ran past its time limit of {limit:g}s and was stopped; make "
            "it finish sooner, or give it more time with @handler_timeout(seconds) on the "
            "handler or its bus, or the worker's handler_timeout"
        )
        self.handler = handler
        self.limit = limit


class SetupRequired(ConfigurationError):
    """A table, queue or stream busway needs does not exist, and ``auto_setup`` is off."""

    def __init__(self, what: str, where: str) -> None:
        super().__init__(
            f"{what} does not exist in {where}; create what busway needs with `busway setup` "
            "(or messaging.setup()), or let Messaging(auto_setup=True) create it on first use"
        )
