"""Recurring messages: what to send, and when, on a cron expression or a fixed interval.

A ``Schedule`` is pure: it knows its ticks (the times it fires, as seconds since the epoch) and
nothing of databases. Firing each tick exactly once however many workers run is the work of
``busway.sql.schedules``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from busway.message import HeaderValue

SCHEDULE = "busway_schedule"
"""The header naming the schedule a message was sent by."""
TICK = "busway_tick"
"""The header naming the tick it was sent for: ``<schedule>@<ISO time>``, unique per tick."""


@dataclass(frozen=True)
class Schedule:
    """Send ``message`` on ``cron`` (a cron expression read in ``zone``) or ``every`` seconds.

    ``message``: the payload to send, or a function of the tick's time (an aware
    ``datetime`` in ``zone``) that makes it. ``kind``: ``"command"`` (sent through the command
    bus) or ``"event"`` (published on the event bus); ``via``: a gateway class to send it
    through instead (a ``CommandBus`` or ``EventBus`` subclass, usually ``@asynchronous``).
    A handler reached without a channel runs in the scheduler's thread, in the transaction
    that records the tick; mark it ``@asynchronous`` to have a worker run it.
    ``catch_up``: what happens to ticks that came due while no worker ran: sent once, as one
    message, when a worker returns (True), or skipped (False); a tick is then sent only if a
    worker sees it within ``grace`` seconds of its time.

    Intervals are counted from the epoch, so every worker agrees on them: ``every=60`` fires
    at each whole minute. In a cron expression, a time the clock skips when daylight saving
    time begins fires at the first moment after the jump, and a time the clock passes twice
    when it ends fires once.
    """

    name: str
    message: Any
    cron: str | None = None
    every: float | timedelta | None = None
    zone: str = "UTC"
    kind: str = "command"
    via: type[Any] | None = None
    catch_up: bool = True
    grace: float = 5.0
    headers: dict[str, HeaderValue] = field(default_factory=dict)

    def problems(self) -> list[str]:
        """What is wrong with this schedule, each in one sentence."""
        where = f"schedule {self.name!r}"
        found: list[str] = []
        if self.kind not in ("command", "event"):
            found.append(f"{where} has kind={self.kind!r}; use 'command' or 'event'")
        if not self.name or len(self.name) > 200:
            found.append(f"{where} needs a name of 1 to 200 characters")
        if (self.cron is None) == (self.every is None):
            found.append(f"{where} needs exactly one of cron='...' and every=<seconds>")
        if self.every is not None and _seconds(self.every) <= 0:
            found.append(f"{where} has every={self.every!r}; give a positive interval")
        try:
            zone = ZoneInfo(self.zone)
        except (ZoneInfoNotFoundError, ValueError):
            found.append(f"{where} has an unknown time zone {self.zone!r}; use an IANA name")
            return found
        if self.cron is not None:
            try:
                from cronsim import CronSim, CronSimError
            except ImportError:
                found.append(f"{where} has a cron expression; install busway[cron] to read it")
                return found
            try:
                CronSim(self.cron, datetime.now(zone))
            except CronSimError as error:
                found.append(f"{where} has a cron expression {self.cron!r} that is wrong: {error}")
        return found

    def latest_due(self, now: float) -> float:
        """The last tick at or before ``now``."""
        if self.every is not None:
            interval = _seconds(self.every)
            return math.floor(now / interval) * interval
        from cronsim import CronSim

        start = datetime.fromtimestamp(now, self._zone())
        before = next(iter(CronSim(self._cron(), start, reverse=True))).timestamp()
        after = self.next_after(before)  # ``now`` itself, when it is a tick
        return after if after <= now else before

    def next_after(self, moment: float) -> float:
        """The first tick after ``moment``."""
        if self.every is not None:
            interval = _seconds(self.every)
            return (math.floor(moment / interval) + 1) * interval
        from cronsim import CronSim

        start = datetime.fromtimestamp(moment, self._zone())
        for tick in CronSim(self._cron(), start):
            if tick.timestamp() > moment:
                return tick.timestamp()
        raise AssertionError("a cron expression that never fires passed validation")

    def tick_id(self, tick: float) -> str:
        return f"{self.name}@{self.local(tick).isoformat()}"

    def local(self, tick: float) -> datetime:
        return datetime.fromtimestamp(tick, self._zone())

    def payload(self, tick: float) -> Any:
        maker: Callable[[datetime], Any] | None = (
            self.message if callable(self.message) and not isinstance(self.message, type) else None
        )
        return maker(self.local(tick)) if maker is not None else self.message

    def _zone(self) -> ZoneInfo:
        return ZoneInfo(self.zone)

    def _cron(self) -> str:
        assert self.cron is not None
        return self.cron


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)
