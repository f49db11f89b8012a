"""Workers: consume channels with limits, and stop gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import resource
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NoReturn

from busway._internal.consuming import Consumer
from busway.channels.base import Channel, Delivery, MessageReturned
from busway.errors import SetupRequired

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
    """What a run did, and why it stopped."""

    handled: int = 0
    failed: int = 0
    reason: str = "running"
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


class Worker:
    def __init__(
        self,
        consumer: Consumer,
        channels: list[str],
        limits: Limits,
        on_progress: Callable[[RunResult], None] | None = None,
    ) -> None:
        runtime = consumer.runtime
        self.consumer = consumer
        self.runtime = runtime
        self.channels = [runtime.channels[name] for name in channels]
        self.limits = limits
        self.result = RunResult()
        self.on_progress = on_progress
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
        self._changed = threading.Condition(self._lock)
        self._achanged: asyncio.Event | None = None

    def stop(self, reason: str = "stopped") -> None:
        """Finish the message in hand, then stop; safe from signal handlers and threads."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self._stopped.set()
        for loop, event in self._wake_on_stop:
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
            self._changed.notify_all()
        if self._achanged is not None:
            self._achanged.set()

    def _count(self, ok: bool, repeated: bool) -> None:
        with self._lock:
            self._in_hand -= 1
            if not repeated:  # a redone batch hands out again what was counted before
                self.result.handled += 1
            if not ok and not repeated:
                self.result.failed += 1
                if self.limits.stop_on_failure:
                    self.stop("failure")
            self._check_limits()
            self._changed.notify_all()
        if self._achanged is not None:
            self._achanged.set()
        if self.on_progress is not None:
            self.on_progress(self.result)

    def _handle(self, delivery: Delivery) -> None:
        self._claim()
        try:
            ok = self.consumer.receive(delivery, self.limits.handler_timeout)
        except BaseException:
            self._unclaim()
            raise
        self._count(ok, delivery.repeated)

    async def _ahandle(self, delivery: Delivery) -> None:
        self._claim()
        try:
            ok = await self.consumer.areceive(delivery, self.limits.handler_timeout)
        except BaseException:
            self._unclaim()
            raise
        self._count(ok, delivery.repeated)

    def _after_idle_pass(self, seen: int) -> bool:
        """After a pass that handled nothing: stop if the run is over; True to wait for others.

        ``seen`` is the count handled when the pass began. While another consumer's pass is in
        progress, its message in hand may send more work or use up the limit: wait for it.
        """
        wait = False
        if self.result.handled == seen:
            if self._passes == 0 and self.limits.until_empty:
                self.stop("empty")
            elif self._passes and (self.limits.until_empty or not self._budget()):
                wait = True
        self._check_limits()
        return wait and not self.stopping

    def _wait(self) -> float:
        if self.limits.until_empty:
            return 0.0
        return self.limits.poll_interval / max(1, len(self.channels))

    def run(self, concurrency: int = 1) -> RunResult:
        if concurrency > 1:
            errors: list[BaseException] = []

            def loop() -> None:
                try:
                    self._loop()
                except BaseException as error:  # the run's error, raised once all have stopped
                    errors.append(error)
                    self.stop("error")

            threads = [
                threading.Thread(
                    target=contextvars.copy_context().run,
                    args=(loop,),
                    name=f"busway-worker-{index}",
                )
                for index in range(concurrency)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if errors:
                raise errors[0]
        else:
            self._loop()
        self.result.reason = self._stop_reason or "empty"
        return self.result

    def _loop(self) -> None:
        self._check_limits()
        while not self.stopping:
            with self._lock:
                self._passes += 1
                seen = self.result.handled
            handled = 0
            try:
                for channel in self.channels:
                    if self.stopping or not self._budget():
                        break
                    handled += self._consume(channel)
            finally:
                with self._lock:
                    self._passes -= 1
                    self._changed.notify_all()
            if handled == 0:
                with self._lock:
                    # Found nothing: start no new pass until another consumer handles
                    # something, or until every pass is over and the run can end.
                    while self._after_idle_pass(seen):
                        self._changed.wait()

    def _consume(self, channel: Channel) -> int:
        try:
            self.runtime.preparation.consuming(channel.name)
            handled = channel.consume(self._handle, self._budget(), self._wait())
        except StopConsuming:
            return 0
        except Exception as error:
            self._stopped.wait(self._outage(channel, error))
            return 0
        self._outages = 0
        return handled

    async def _aconsume(self, channel: Channel) -> int:
        try:
            await self.runtime.preparation.aconsuming(channel.name)
            handled = await channel.aconsume(self._ahandle, self._budget(), self._wait())
        except StopConsuming:
            return 0
        except Exception as error:
            pause = self._outage(channel, error)
            stopped = asyncio.Event()
            self._wake_on_stop.append((asyncio.get_running_loop(), stopped))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), pause)
            return 0
        self._outages = 0
        return handled

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

    async def arun(self, concurrency: int = 1) -> RunResult:
        self._achanged = asyncio.Event()
        await asyncio.gather(*(self._aloop() for _ in range(max(1, concurrency))))
        self.result.reason = self._stop_reason or "empty"
        return self.result

    async def _aloop(self) -> None:
        changed = self._achanged
        assert changed is not None
        self._check_limits()
        while not self.stopping:
            self._passes += 1
            seen = self.result.handled
            handled = 0
            try:
                for channel in self.channels:
                    if self.stopping or not self._budget():
                        break
                    handled += await self._aconsume(channel)
            finally:
                self._passes -= 1
                changed.set()
            if handled == 0:
                while self._after_idle_pass(seen):
                    changed.clear()
                    await changed.wait()


def _peak_memory() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


EXIT_ABORTED = 3
"""The exit code of a worker process ended in the middle of a handler (see ``abort``)."""


def abort(why: str) -> NoReturn:
    """End this process now, in the middle of whatever handler it runs.

    Nothing is acknowledged: the database rolls back the batch transaction when the
    connection drops, a broker gives its unacknowledged messages to another consumer (Redis
    and NATS after ``claim_idle`` / ``ack_wait``), a lease runs out after its
    ``visibility_timeout``. Exits with ``EXIT_ABORTED``.
    """
    log.error(
        "%s: ending the worker without finishing the handler in hand; its messages go back "
        "to their channels unacknowledged (exit code %d)",
        why,
        EXIT_ABORTED,
    )
    logging.shutdown()
    os._exit(EXIT_ABORTED)


@contextlib.contextmanager
def graceful_signals(
    worker: Worker,
    loop: asyncio.AbstractEventLoop | None = None,
    shutdown_timeout: float | None = None,
) -> Iterator[None]:
    """While running, SIGTERM and SIGINT stop the worker after the message in hand.

    A second signal, or ``shutdown_timeout`` seconds after the first, ends the process at
    once (``abort``): for a handler that does not finish. Only in the main thread, and only
    where the application has not set its own handlers (a web server's, say), which are left
    alone.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[str] = []
    timers: list[threading.Timer] = []

    def stop(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if received:
            abort(f"second signal ({name}) while stopping")
        received.append(name)
        log.info("%s received: finishing the message in hand, then stopping", name)
        if loop is None:
            worker.stop(name)
        else:
            # A Python-level handler, not loop.add_signal_handler: it runs even while a def
            # handler blocks the event loop, so that a second signal still ends the process.
            loop.call_soon_threadsafe(worker.stop, name)
        if shutdown_timeout is not None:
            timer = threading.Timer(
                shutdown_timeout, abort, (f"still stopping {shutdown_timeout:g}s after {name}",)
            )
            timer.daemon = True
            timers.append(timer)
            timer.start()

    ours = [
        sig
        for sig in (signal.SIGTERM, signal.SIGINT)
        if signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler)
    ]
    previous = {sig: signal.getsignal(sig) for sig in ours}
    for sig in ours:
        signal.signal(sig, stop)
    try:
        yield
    finally:
        for timer in timers:
            timer.cancel()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
