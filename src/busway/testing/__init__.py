"""Support for testing applications built on busway.

``record`` notes every message sent through a gateway and every envelope put on a channel;
``run_until_idle`` drains every channel, including what one channel feeds another;
``FakeClock`` makes delays and retries happen when a test says so::

    clock = FakeClock()
    messaging = Messaging(handlers=[...], channels=[InMemoryChannel("async")], clock=clock)
    with record(messaging) as recorded:
        messaging.gateway(AsyncCommandBus).send(PlaceOrder("o-1"))
        run_until_idle(messaging)
    assert recorded.sent(AsyncCommandBus) == [PlaceOrder("o-1")]
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from busway._internal.runtime import Observer
from busway.channels.base import Envelope
from busway.gateways import Gateway
from busway.message import TYPE, Message
from busway.testing.conformance import ChannelContract
from busway.worker import RunResult

if TYPE_CHECKING:
    from busway._internal.runtime import Runtime
    from busway.messaging import Messaging

__all__ = [
    "ChannelContract",
    "FakeClock",
    "NotIdleError",
    "Recording",
    "arun_until_idle",
    "record",
    "run_until_idle",
]

DEFAULT_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class _Sent:
    """One message as it left a gateway."""

    gateway: type[Gateway]
    message: Message[Any]


@dataclass(frozen=True, slots=True)
class _Enqueued:
    """One envelope as it was put on a channel."""

    channel: str
    envelope: Envelope


class Recording:
    """What was sent through each gateway and put on each channel while recording."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._lock = threading.Lock()
        self._sent: list[_Sent] = []
        self._enqueued: list[_Enqueued] = []

    def messages(self, gateway: type[Gateway] | None = None) -> list[Message[Any]]:
        """Messages sent through ``gateway`` (exactly that class), or through any gateway."""
        with self._lock:
            return [
                record.message
                for record in self._sent
                if gateway is None or record.gateway is gateway
            ]

    def sent(self, gateway: type[Gateway] | None = None) -> list[Any]:
        """Payloads sent through ``gateway`` (exactly that class), or through any gateway."""
        return [message.payload for message in self.messages(gateway)]

    def envelopes(self, channel: str) -> list[Envelope]:
        """Envelopes put on ``channel``, retries and pipeline hops included."""
        with self._lock:
            return [record.envelope for record in self._enqueued if record.channel == channel]

    def on_channel(self, channel: str) -> list[Any]:
        """Payloads put on ``channel``, decoded as a worker would decode them."""
        return [self._decode(envelope) for envelope in self.envelopes(channel)]

    def clear(self) -> None:
        """Forget everything recorded so far."""
        with self._lock:
            self._sent.clear()
            self._enqueued.clear()

    def _decode(self, envelope: Envelope) -> Any:
        cls = self._runtime.router.payload_class(str(envelope.headers.get(TYPE)))
        if cls is None:
            return msgspec.json.decode(envelope.body)
        return self._runtime.conversion.decode(envelope.body, cls)

    def _add_sent(self, record: _Sent) -> None:
        with self._lock:
            self._sent.append(record)

    def _add_enqueued(self, record: _Enqueued) -> None:
        with self._lock:
            self._enqueued.append(record)


class _Recorder(Observer):
    def __init__(self, recording: Recording) -> None:
        self.recording = recording

    def sent(self, gateway: type[Gateway], message: Message[Any]) -> None:
        self.recording._add_sent(_Sent(gateway, message))

    def enqueued(self, channel: str, envelope: Envelope) -> None:
        self.recording._add_enqueued(_Enqueued(channel, envelope))


@contextmanager
def record(messaging: Messaging) -> Iterator[Recording]:
    """Record what ``messaging`` sends inside the ``with`` block."""
    runtime = messaging.runtime
    recording = Recording(runtime)
    observer = _Recorder(recording)
    runtime.observers.append(observer)
    try:
        yield recording
    finally:
        runtime.observers.remove(observer)


class NotIdleError(AssertionError):
    """The channels still had messages after ``limit`` deliveries."""


def run_until_idle(
    messaging: Messaging, channels: Sequence[str] | None = None, *, limit: int = DEFAULT_LIMIT
) -> RunResult:
    """Consume ``channels`` (all by default) until none has a message deliverable now.

    A message delayed past the clock's present stays queued: advance a ``FakeClock`` and call
    again. Raises ``NotIdleError`` after ``limit`` deliveries, which usually means a handler
    feeds its own channel for ever.
    """
    names = list(messaging.channels) if channels is None else list(channels)
    if not names:
        return RunResult(reason="empty")
    result = messaging.worker(names, limit=limit + 1).run()
    return _checked(result, names, limit)


async def arun_until_idle(
    messaging: Messaging, channels: Sequence[str] | None = None, *, limit: int = DEFAULT_LIMIT
) -> RunResult:
    """``run_until_idle`` for asyncio tests: handlers run on the current event loop."""
    names = list(messaging.channels) if channels is None else list(channels)
    if not names:
        return RunResult(reason="empty")
    result = await messaging.worker(names, limit=limit + 1).arun()
    return _checked(result, names, limit)


def _checked(result: RunResult, names: list[str], limit: int) -> RunResult:
    if result.handled > limit:
        raise NotIdleError(
            f"channels {', '.join(names)} still had messages after {limit} deliveries; "
            "a handler may be feeding its own channel, or pass a larger limit="
        )
    return result


class FakeClock:
    """A clock that moves only when told to; pass it as ``Messaging(clock=...)``.

    Returns epoch seconds, starting from ``start``.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self._now

    def __repr__(self) -> str:
        return f"FakeClock({self._now!r})"

    def advance(self, seconds: float | timedelta) -> None:
        """Move the clock forward; messages delayed up to the new time become deliverable."""
        step = seconds.total_seconds() if isinstance(seconds, timedelta) else float(seconds)
        if step < 0:
            raise ValueError("FakeClock only moves forward; pass seconds >= 0")
        with self._lock:
            self._now += step
