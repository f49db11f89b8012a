# Generated from src/busway/worker/_async/loop.py by tools/unasync.py: do not edit.
# Change the asyncio source, then run `make generate`.
"""The loop of a worker: passes over its channels until it stops, each pass taking what each
channel hands out within the budget; a pass that found nothing waits for other consumers'
passes in progress, or for the run to end."""

from __future__ import annotations

import time

from busway._internal._sync.receiving import receive
from busway._internal.links import worker_stopping
from busway.channels.base import Channel, Delivery
from busway.worker import each_message
from busway.worker.state import StopConsuming, WorkerState


class Loop(WorkerState):
    def _loop(self) -> None:
        changed = self._changed
        assert changed is not None
        self._check_limits()
        stopping = worker_stopping.set(self)  # for links that wait: a held retry
        try:
            while not self.stopping:
                with changed:
                    self._passes += 1
                    seen = self.result.handled
                    begun = self._begin_pass()
                handled = 0
                try:
                    for channel in self.channels:
                        if self.stopping or not self._budget():
                            break
                        handled += self._consume(channel)
                finally:
                    with changed:
                        self._end_pass(handled)
                        changed.notify_all()
                if handled == 0:
                    with changed:
                        # Found nothing: start no new pass until another consumer handles
                        # something, or until every pass is over and the run can end.
                        self._idle += 1
                        try:
                            while self._after_idle_pass(seen, begun):
                                changed.wait()
                        finally:
                            self._idle -= 1
        finally:
            worker_stopping.reset(stopping)

    def _consume(self, channel: Channel) -> int:
        try:
            self.runtime.preparation.consuming(channel.name)
            handled = channel.consume(self._handle, self._budget(), self._wait())
        except StopConsuming:
            return 0
        except Exception as error:
            self.pause(self._outage(channel, error))
            return 0
        self._outages = 0
        return handled

    def _handle(self, delivery: Delivery) -> None:
        self._claim()
        started = time.perf_counter() if self._each else 0.0
        try:
            outcome = receive(self.consumer, delivery, self.limits.handler_timeout)
        except BaseException:
            self._unclaim()
            raise
        self._count(outcome, delivery.repeated)
        if self._each:
            each_message.note(delivery, outcome, time.perf_counter() - started)
