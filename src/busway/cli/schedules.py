"""``busway schedules``: each recurring message with its last and next firing."""

from __future__ import annotations

import datetime

import click

from busway.cli.app import app_option, opened
from busway.cli.console import table


@click.command()
@app_option
def schedules(app: str) -> None:
    """List the schedules with their last tick, when it was fired, and the next tick.

    Times are in each schedule's own time zone. Workers fire the schedules while they run
    (``busway run``); no separate process is needed.
    """
    with opened(app) as messaging:
        states = messaging.schedules()
        zones = {schedule.name: schedule.zone for schedule in messaging.schedule_definitions}
    if not states:
        click.echo("this application has no schedules")
        return
    rows = [("NAME", "LAST TICK", "FIRED AT", "NEXT TICK")]
    for state in states:
        zone = zones[state.name]
        rows.append(
            (
                state.name,
                _moment(state.last_tick, zone),
                _moment(state.fired_at, zone),
                _moment(state.next_tick, zone),
            )
        )
    table(rows)


def _moment(seconds: float | None, zone: str) -> str:
    if seconds is None:
        return "-"
    from zoneinfo import ZoneInfo

    return datetime.datetime.fromtimestamp(seconds, ZoneInfo(zone)).isoformat(timespec="seconds")
