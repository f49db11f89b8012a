"""``Messaging(schedules=...)``: the schedules checked at start-up, and each tick's message
sent through the application's gateways. ``busway.sql.schedules`` records the ticks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from busway._internal.outlet import Gateways
from busway._internal.runtime import Runtime
from busway.errors import NoHandlerError
from busway.gateways import CommandBus, EventBus, Gateway
from busway.handlers import Kind
from busway.messaging._database import MessagingDatabase
from busway.schedules import SCHEDULE, TICK, Schedule


def make_schedules(
    schedules: Sequence[Schedule],
    database: MessagingDatabase,
    gateways: Gateways,
    runtime: Runtime,
    clock: Callable[[], float],
) -> tuple[Any, list[str]]:
    """The ``Schedules`` to fire (None without any), and every problem found with them."""
    if not schedules:
        return None, []
    problems = [problem for schedule in schedules for problem in schedule.problems()]
    names = [schedule.name for schedule in schedules]
    problems += [
        f"two schedules are named {name!r}; give each schedule its own name"
        for name in sorted({n for n in names if names.count(n) > 1})
    ]
    problems += [
        problem
        for schedule in schedules
        for problem in _route_problems(schedule, gateways, runtime)
    ]
    if database.extension is None:
        problems.append(
            "schedules need Messaging(database=...): the database records each tick, so "
            "that it is sent once however many workers run"
        )
        return None, problems
    from busway.sql.schedules import Schedules

    made = Schedules(
        database.extension.database,
        schedules,
        database.transaction,
        Ticks(gateways).send,
        clock,
    )
    return made, problems


def _route_problems(schedule: Schedule, gateways: Gateways, runtime: Runtime) -> list[str]:
    """Why ``schedule``'s messages could not be sent, found now rather than at a tick."""
    where = f"schedule {schedule.name!r}"
    if schedule.via is not None:
        if not (isinstance(schedule.via, type) and issubclass(schedule.via, Gateway)):
            return [f"{where} has via={schedule.via!r}; give a CommandBus or EventBus class"]
        _, problems = gateways.bind(schedule.via)
        return problems
    payload = schedule.message
    if schedule.kind != "command" or (callable(payload) and not isinstance(payload, type)):
        return []  # events need no subscriber; a made payload's type is known at its tick
    try:
        runtime.targets(Kind.COMMAND, type(payload), None)
    except NoHandlerError as error:
        return [f"{where} sends a command nobody handles: {error}"]
    return []


class Ticks:
    """Sends a schedule's message for one tick, through its gateway or the plain buses."""

    def __init__(self, gateways: Gateways) -> None:
        self._gateways = gateways

    def send(self, schedule: Schedule, tick: float) -> None:
        headers = {**schedule.headers, SCHEDULE: schedule.name, TICK: schedule.tick_id(tick)}
        payload = schedule.payload(tick)
        via: type[Gateway] = schedule.via or (EventBus if schedule.kind == "event" else CommandBus)
        gateway: Any = self._gateways.get(via)
        if isinstance(gateway, EventBus):
            gateway.publish(payload, headers=headers)
        else:
            gateway.send(payload, headers=headers)
