"""A running worker's heartbeat: beaten from a thread of its own every few seconds, never
from the loop that handles messages, and removed when the worker stops.

A beat that fails (the database is down) is logged once and tried again at the next beat; it
never stops the worker. A worker that dies without stopping leaves its last beat behind, and
``Messaging.workers()`` reports it silent once it is old.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from busway.liveness import Heartbeat, HeartbeatStore
from busway.message import uuid7

if TYPE_CHECKING:
    from busway.worker.state import RunResult

log = logging.getLogger("busway.worker")

HEARTBEAT_INTERVAL = 5.0
"""The seconds between a worker's beats, unless told otherwise."""
STOP_WAIT = 5.0
"""How long a stopping worker waits for its last beat's removal."""


@dataclasses.dataclass(frozen=True, slots=True)
class Heartbeats:
    """Where a worker beats, and how often; made once, by ``Messaging.worker()``."""

    store: HeartbeatStore
    interval: float = HEARTBEAT_INTERVAL
    clock: Callable[[], float] = time.time
    prepare: Callable[[], None] | None = None
    """Run before a beat: the set-up at first use of the table the store writes to."""


class Beating:
    """The heartbeat of one run, while it lasts (``with Beating(...):``)."""

    def __init__(self, heartbeats: Heartbeats, channels: list[str], result: RunResult) -> None:
        self._settings = heartbeats
        self._result = result
        now = heartbeats.clock()
        self.first = Heartbeat(
            worker_id=uuid7(),
            host=socket.gethostname(),
            pid=os.getpid(),
            channels=tuple(channels),
            started=now,
            last_beat=now,
            interval=heartbeats.interval,
            handled=0,
            failed=0,
        )
        self._stopped = threading.Event()
        self._failing = False
        self._thread = threading.Thread(
            target=self._beat_until_stopped, name=f"busway-heartbeat-{self.first.pid}", daemon=True
        )

    @property
    def worker_id(self) -> str:
        return self.first.worker_id

    def __enter__(self) -> Beating:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stopped.set()
        self._thread.join(STOP_WAIT)

    def _beat_until_stopped(self) -> None:
        settings = self._settings
        while True:
            self._beat()
            if self._stopped.wait(settings.interval):
                break
        try:
            settings.store.remove(self.worker_id)
        except Exception as error:
            log.warning(
                "worker %s stopped, but its heartbeat could not be removed (%s: %s); it will "
                "show as silent",
                self.worker_id,
                type(error).__name__,
                error,
                extra={"worker_id": self.worker_id},
            )

    def _beat(self) -> None:
        settings = self._settings
        result = self._result
        now = settings.clock()
        beat = dataclasses.replace(
            self.first, last_beat=now, handled=result.handled, failed=result.failed
        )
        try:
            if settings.prepare is not None:
                settings.prepare()
            settings.store.beat(beat)
        except Exception as error:
            self._failed(error)
            return
        if self._failing:
            self._failing = False
            log.info("worker %s: heartbeats recorded again", self.worker_id)

    def _failed(self, error: Exception) -> None:
        """Say so at the first failure; while it goes on, only at DEBUG."""
        level = logging.DEBUG if self._failing else logging.WARNING
        self._failing = True
        log.log(
            level,
            "worker %s: heartbeat failed (%s: %s); trying again in %gs, the worker goes on",
            self.worker_id,
            type(error).__name__,
            error,
            self._settings.interval,
            extra={"worker_id": self.worker_id, "error_type": type(error).__name__},
        )
