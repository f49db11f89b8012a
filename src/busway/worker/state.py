"""What a worker knows while it runs, and the decisions taken on it: the budget of messages,
the limits, when a pass that found nothing waits for others and when the run is over. The
loops that consume channels are ``busway.worker._async.loop`` and the sync one generated
from it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from busway._internal.consuming import Consumer, Outcome
from busway.channels.base import Channel, MessageReturned
from busway.errors import SetupRequired
from busway.worker.heartbeat import Heartbeats

log = logging.getLogger("busway.worker")


StopConsuming = MessageReturned
FIRST_OUTAGE_PAUSE = 0.5
MAX_OUTAGE_PAUSE = 30.0
"""The longest wait before a long-running worker tries a failing channel again."""


@dataclass(frozen=True, slots=True)
class Limits:
    limit: int | None = None
    time_limit: float | None = None
    memory_limit: int | None = None
    """Stop once the process's peak resident memory passes this many bytes."""
    until_empty: bool = True
    stop_on_failure: bool = False
    batch_size: int = 1000
    """The most messages one pass over a channel hands out; each channel takes at most its
    own ``batch_size`` at a time within that."""
    poll_interval: float = 1.0
    handler_timeout: float | None = None
    """The time limit of a handling whose handler and bus set none."""


@dataclass(slots=True)
class RunResult:
    """What a run did, and why it stopped.

    ``handled`` counts deliveries, each handed out once (a message retried later is
    delivered, and counted, again); ``failed`` those where a handler failed; ``retried`` the
    delayed retries their failures scheduled; ``dead_lettered`` the dead letters they wrote.
    """

    handled: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    reason: str = "running"
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


class Changes:
    """``threading.Condition``'s use in the sync loop, for the consumers of one event loop:
    nothing to lock; ``notify_all`` wakes every waiter."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    async def __aenter__(self) -> None:
        pass

    async def __aexit__(self, *_: object) -> None:
        pass

    def notify_all(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        self._event.clear()
        await self._event.wait()


class WorkerState:
    def __init__(
        self,
        consumer: Consumer,
        channels: list[str],
        limits: Limits,
        on_progress: Callable[[RunResult], None] | None = None,
        heartbeats: Heartbeats | None = None,
    ) -> None:
        runtime = consumer.runtime
        self.consumer = consumer
        self.runtime = runtime
        self.channels = [runtime.channels[name] for name in channels]
        self.limits = limits
        self.result = RunResult()
        self.on_progress = on_progress
        self.heartbeats = heartbeats
        self._each = False
        """Whether each message handled gets its log line (``each_message``), read at start."""
        self._stop_reason: str | None = None
        self._stopped = threading.Event()
        self._wake_on_stop: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._outages = 0
        self._lock = threading.Lock()
        # With several consumers, "empty" needs more than one consumer finding nothing: another
        # consumer's message in hand may still send more. So count the passes in progress, and
        # the messages in hand, which also count against the limit.
        self._passes = 0
        self._in_hand = 0
        self._idle = 0
        """The consumers waiting after an idle pass: only they need telling of a message
        handled."""
        self._pass_number = 0
        self._settled = 0
        """The number of the last pass begun before a pass that handled something ended: a
        pass begun after it saw that pass's commit."""
        self._changed = threading.Condition(self._lock)
        self._achanged: Changes | None = None

    def stop(self, reason: str = "stopped") -> None:
        """Finish the message in hand, then stop; safe from signal handlers and threads."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self._stopped.set()
        for loop, event in list(self._wake_on_stop):
            loop.call_soon_threadsafe(event.set)
        for channel in self.channels:
            channel.interrupt()

    @property
    def stopping(self) -> bool:
        return self._stop_reason is not None

    def _budget(self) -> int:
        if self.limits.limit is None:
            return self.limits.batch_size
        left = self.limits.limit - self.result.handled - self._in_hand
        return max(0, min(self.limits.batch_size, left))

    def _check_limits(self) -> None:
        limits = self.limits
        if limits.limit is not None and self.result.handled >= limits.limit:
            self.stop("limit")
        elif limits.time_limit is not None and self.result.elapsed >= limits.time_limit:
            self.stop("time-limit")
        elif limits.memory_limit is not None and _peak_memory() >= limits.memory_limit:
            self.stop("memory-limit")

    def _claim(self) -> None:
        """Take a place for the message about to be handled, or refuse it: the run is over."""
        with self._lock:
            if self.stopping or not self._budget():
                raise StopConsuming
            self._in_hand += 1

    def _unclaim(self) -> None:
        with self._lock:
            self._in_hand -= 1
            self._tell_idle()

    def _count(self, outcome: Outcome, repeated: bool) -> None:
        result = self.result
        with self._lock:
            self._in_hand -= 1
            if not repeated:  # a redone batch hands out again what was counted before
                result.handled += 1
                result.retried += outcome.retried
                result.dead_lettered += outcome.dead_lettered
            if not outcome.ok and not repeated:
                result.failed += 1
                if self.limits.stop_on_failure:
                    self.stop("failure")
            self._check_limits()
            self._tell_idle()
        if self.on_progress is not None:
            self.on_progress(self.result)

    def _tell_idle(self) -> None:
        """Wake the consumers waiting after an idle pass, if any (holding the lock)."""
        if self._idle:
            self._changed.notify_all()
            if self._achanged is not None:
                self._achanged.notify_all()

    def _begin_pass(self) -> int:
        """Number a pass about to begin (holding the lock)."""
        self._pass_number += 1
        return self._pass_number

    def _end_pass(self, handled: int) -> None:
        """A pass ended, having handled ``handled`` messages (holding the lock)."""
        self._passes -= 1
        if handled:
            self._settled = self._pass_number

    def _after_idle_pass(self, seen: int, begun: int) -> bool:
        """After a pass that handled nothing: stop if the run is over; True to wait for others.

        ``seen`` is the count handled when the pass began, ``begun`` its number. While another
        consumer's pass is in progress, its message in hand may send more work or use up the
        limit: wait for it. When none is, the channels look empty; but a pass begun before
        another one that handled something ended may have missed what that one's commit freed
        (the next message of a key whose message it handled): the run ends when a pass begun
        after it finds nothing too, and until then the consumer looks again.
        """
        wait = False
        if self.result.handled == seen:
            if self._passes == 0 and self.limits.until_empty:
                if begun > self._settled:
                    self.stop("empty")
            elif self._passes and (self.limits.until_empty or not self._budget()):
                wait = True
        self._check_limits()
        return wait and not self.stopping

    def _wait(self) -> float:
        if self.limits.until_empty:
            return 0.0
        return self.limits.poll_interval / max(1, len(self.channels))

    def _outage(self, channel: Channel, error: Exception) -> float:
        """How long to wait before trying a failing channel again; raises if a run from code
        should stop instead (it ends when the channel is empty, so it cannot wait it out), or
        if waiting cannot help: a missing table appears only if set-up runs again."""
        if self.limits.until_empty:
            raise error
        if isinstance(error, SetupRequired) and not self.runtime.preparation.again():
            raise error
        self._outages += 1
        pause = min(MAX_OUTAGE_PAUSE, FIRST_OUTAGE_PAUSE * 2.0 ** (self._outages - 1))
        log.error(
            "channel %r failed (%s: %s); trying again in %.1fs",
            channel.name,
            type(error).__name__,
            error,
            pause,
        )
        return pause

    def pause(self, seconds: float) -> bool:
        """Wait ``seconds``, or until the worker is told to stop; whether it was."""
        return self._stopped.wait(seconds)

    async def apause(self, seconds: float) -> bool:
        if self.stopping:
            return True
        stopped = asyncio.Event()
        waiting = (asyncio.get_running_loop(), stopped)
        self._wake_on_stop.append(waiting)
        try:
            if not self.stopping:  # told meanwhile, before ``stop`` could see the event
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopped.wait(), seconds)
        finally:
            self._wake_on_stop.remove(waiting)
        return self.stopping


def _peak_memory() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
