"""Workers: consume channels with limits, and stop gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import signal
import threading
from collections.abc import Iterator
from typing import NoReturn

from busway.worker import each_message
from busway.worker._async.loop import AsyncLoop
from busway.worker._sync.loop import Loop
from busway.worker.heartbeat import HEARTBEAT_INTERVAL, Beating, Heartbeats
from busway.worker.state import (
    FIRST_OUTAGE_PAUSE,
    MAX_OUTAGE_PAUSE,
    Changes,
    Limits,
    RunResult,
    StopConsuming,
)

__all__ = [
    "EXIT_ABORTED",
    "FIRST_OUTAGE_PAUSE",
    "HEARTBEAT_INTERVAL",
    "MAX_OUTAGE_PAUSE",
    "Heartbeats",
    "Limits",
    "RunResult",
    "StopConsuming",
    "Worker",
    "abort",
    "graceful_signals",
]

log = logging.getLogger("busway.worker")


class Worker(Loop, AsyncLoop):
    def run(self, concurrency: int = 1) -> RunResult:
        self._each = each_message.wanted()
        with self._beating():
            self._run(concurrency)
        self.result.reason = self._stop_reason or "empty"
        return self.result

    def _run(self, concurrency: int) -> None:
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

    async def arun(self, concurrency: int = 1) -> RunResult:
        self._achanged = Changes()
        self._each = each_message.wanted()
        with self._beating():
            await asyncio.gather(*(self._aloop() for _ in range(max(1, concurrency))))
        self.result.reason = self._stop_reason or "empty"
        return self.result

    def _beating(self) -> contextlib.AbstractContextManager[object]:
        """The run's heartbeat, from a thread of its own; none without a store."""
        if self.heartbeats is None:
            return contextlib.nullcontext()
        names = [channel.name for channel in self.channels]
        return Beating(self.heartbeats, names, self.result)


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
