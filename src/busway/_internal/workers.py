"""``messaging.workers()`` and ``messaging.health()``: the workers' heartbeats read back, and
each channel judged by what it holds and which live workers consume it."""

from __future__ import annotations

from collections.abc import Sequence

from busway._internal.runtime import Runtime
from busway.liveness import (
    ChannelState,
    Health,
    HeartbeatStore,
    WorkerRecord,
    assess,
    worker_record,
)


class Workers:
    """The live workers of an application, by the heartbeats in ``store``."""

    def __init__(self, runtime: Runtime, store: HeartbeatStore) -> None:
        self._runtime = runtime
        self.store = store

    def list(self, silent_after: float | None = None) -> list[WorkerRecord]:
        self._runtime.preparation.sql()
        now = self._runtime.clock()
        return [worker_record(beat, now, silent_after) for beat in self.store.list()]

    def forget(self, silent_for: float) -> int:
        self._runtime.preparation.sql()
        return self.store.forget(self._runtime.clock() - silent_for)

    def health(
        self, max_age: float, channels: Sequence[str], silent_after: float | None = None
    ) -> Health:
        workers: list[WorkerRecord] = []
        errors: list[str] = []
        try:
            workers = self.list(silent_after)
        except Exception as error:  # the database is down, say: a problem to report
            errors.append(
                f"the workers' heartbeats cannot be read: {type(error).__name__}: {error}"
            )
        states = {name: self._state(name) for name in channels}
        return assess(states, workers, max_age, errors)

    def _state(self, name: str) -> ChannelState:
        channel = self._runtime.channels[name]
        try:
            self._runtime.preparation.sending(name)
            return ChannelState(channel.depth(), channel.oldest_age())
        except Exception as error:
            return ChannelState(error=f"{type(error).__name__}: {error}")
