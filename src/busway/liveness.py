"""Whether an application's messages flow: the heartbeats of its workers, and its health.

A running worker beats every few seconds into a ``HeartbeatStore`` (the ``busway_workers``
table of the messaging database, or this process's memory without one). A worker whose last
beat is older than its threshold is silent: it died without saying so. ``assess``
turns what the channels hold and which workers are alive into a ``Health``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

SILENT_AFTER_BEATS = 3
"""A worker is silent once it missed this many of its beats."""


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """What a running worker records of itself, at each beat."""

    worker_id: str
    host: str
    pid: int
    channels: tuple[str, ...]
    started: float
    """When the worker started (seconds since the epoch, by the application's clock)."""
    last_beat: float
    interval: float
    """The seconds between its beats."""
    handled: int
    failed: int


@dataclass(frozen=True, slots=True)
class WorkerRecord(Heartbeat):
    """A worker as ``Messaging.workers()`` sees it: its last heartbeat, and whether it is
    alive (its last beat is recent enough) or silent."""

    alive: bool = True
    silent_for: float = 0.0
    """Seconds since its last beat."""


def worker_record(beat: Heartbeat, now: float, silent_after: float | None = None) -> WorkerRecord:
    """``beat`` judged at ``now``: silent past ``silent_after`` seconds, by default after
    ``SILENT_AFTER_BEATS`` of its own intervals."""
    threshold = SILENT_AFTER_BEATS * beat.interval if silent_after is None else silent_after
    since = max(0.0, now - beat.last_beat)
    fields = {name: getattr(beat, name) for name in Heartbeat.__dataclass_fields__}
    return WorkerRecord(**fields, alive=since <= threshold, silent_for=since)


class HeartbeatStore(Protocol):
    """Where workers record their heartbeats."""

    def beat(self, heartbeat: Heartbeat) -> None:
        """Record ``heartbeat``, replacing the worker's previous one."""

    def remove(self, worker_id: str) -> None:
        """Forget a worker that stopped."""

    def list(self) -> list[Heartbeat]:
        """Every worker's last heartbeat, oldest start first."""

    def forget(self, before: float) -> int:
        """Forget the workers whose last beat was before ``before``; how many."""


class InMemoryHeartbeatStore:
    """Heartbeats of this process's workers only: what an application without a database
    can know. Another process (``busway workers``) sees none of them."""

    def __init__(self) -> None:
        self._beats: dict[str, Heartbeat] = {}
        self._lock = threading.Lock()

    def beat(self, heartbeat: Heartbeat) -> None:
        with self._lock:
            self._beats[heartbeat.worker_id] = heartbeat

    def remove(self, worker_id: str) -> None:
        with self._lock:
            self._beats.pop(worker_id, None)

    def list(self) -> list[Heartbeat]:
        with self._lock:
            beats = list(self._beats.values())
        return sorted(beats, key=lambda beat: beat.started)

    def forget(self, before: float) -> int:
        with self._lock:
            gone = [key for key, beat in self._beats.items() if beat.last_beat < before]
            for key in gone:
                del self._beats[key]
        return len(gone)


# -- health ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChannelState:
    """What a channel holds, as far as it can tell (``None``: it cannot), or why it could
    not be read."""

    depth: int | None = None
    oldest_age: float | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ChannelHealth:
    """One channel's health: what it holds, the live workers consuming it, what is wrong."""

    channel: str
    depth: int | None
    oldest_age: float | None
    workers: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class Health:
    """The result of ``Messaging.health()``: healthy when no channel has a problem."""

    channels: tuple[ChannelHealth, ...]
    max_age: float
    errors: tuple[str, ...] = ()
    """Problems of no one channel: the workers' heartbeats could not be read, say."""

    @property
    def ok(self) -> bool:
        return not self.errors and all(channel.ok for channel in self.channels)

    @property
    def problems(self) -> list[str]:
        """Every problem, each a sentence naming what it is about."""
        found = [problem for channel in self.channels for problem in channel.problems]
        return [*self.errors, *found]

    def __bool__(self) -> bool:
        return self.ok


def assess(
    states: Mapping[str, ChannelState],
    workers: Iterable[WorkerRecord],
    max_age: float,
    errors: Iterable[str] = (),
) -> Health:
    """The health of the channels in ``states``: each must have no message older than
    ``max_age`` seconds, and a live worker consuming it. ``errors``: other problems."""
    live = [worker for worker in workers if worker.alive]
    channels = []
    for name, state in states.items():
        consumers = sum(name in worker.channels for worker in live)
        problems = []
        if state.error is not None:
            problems.append(f"channel {name!r} cannot be read: {state.error}")
        if state.oldest_age is not None and state.oldest_age > max_age:
            problems.append(
                f"channel {name!r}: its oldest message is {state.oldest_age:.1f}s old "
                f"(more than {max_age:g}s)"
            )
        if not consumers:
            problems.append(f"channel {name!r}: no live worker consumes it")
        channels.append(
            ChannelHealth(name, state.depth, state.oldest_age, consumers, tuple(problems))
        )
    return Health(tuple(channels), max_age, tuple(errors))
