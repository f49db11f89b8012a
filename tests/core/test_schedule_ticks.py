"""Schedules on their own: the ticks of intervals and cron expressions, across daylight saving
time, and what a wrong schedule is told at start-up."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from busway import ConfigurationError, Messaging, command_handler
from busway.schedules import Schedule

PARIS = ZoneInfo("Europe/Paris")


@dataclass
class Report:
    day: str = ""


def at(*parts: int, zone: ZoneInfo = PARIS, fold: int = 0) -> float:
    return datetime(*parts, tzinfo=zone, fold=fold).timestamp()  # type: ignore[misc]


def ticks(schedule: Schedule, start: float, end: float) -> list[datetime]:
    found = []
    tick = schedule.next_after(start)
    while tick <= end:
        found.append(schedule.local(tick))
        tick = schedule.next_after(tick)
    return found


def test_an_interval_ticks_at_whole_multiples_every_worker_agrees_on() -> None:
    schedule = Schedule("pulse", Report(), every=15)
    assert schedule.next_after(1_000_000_007.5) == 1_000_000_020
    assert schedule.next_after(1_000_000_020) == 1_000_000_035
    assert schedule.latest_due(1_000_000_020) == 1_000_000_020
    assert schedule.latest_due(1_000_000_034.9) == 1_000_000_020


def test_a_cron_tick_at_now_is_due_now() -> None:
    schedule = Schedule("daily", Report(), cron="0 12 * * *", zone="Europe/Paris")
    noon = at(2026, 6, 1, 12, 0)
    assert schedule.latest_due(noon) == noon
    assert schedule.latest_due(noon - 1) == at(2026, 5, 31, 12, 0)
    assert schedule.next_after(noon) == at(2026, 6, 2, 12, 0)


def test_a_time_the_clock_skips_fires_once_right_after_the_jump() -> None:
    # 29 March 2026: Paris goes from 02:00 to 03:00; 02:30 does not exist that night.
    schedule = Schedule("nightly", Report(), cron="30 2 * * *", zone="Europe/Paris")
    fired = ticks(schedule, at(2026, 3, 27, 12, 0), at(2026, 3, 31, 12, 0))
    assert [tick.isoformat() for tick in fired] == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]


def test_a_time_the_clock_passes_twice_fires_once() -> None:
    # 25 October 2026: Paris goes from 03:00 back to 02:00; 02:30 happens twice.
    schedule = Schedule("nightly", Report(), cron="30 2 * * *", zone="Europe/Paris")
    fired = ticks(schedule, at(2026, 10, 23, 12, 0), at(2026, 10, 27, 12, 0))
    assert [tick.isoformat() for tick in fired] == [
        "2026-10-24T02:30:00+02:00",
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
        "2026-10-27T02:30:00+01:00",
    ]


def test_an_hourly_schedule_fires_every_real_hour_across_both_changes() -> None:
    schedule = Schedule("hourly", Report(), cron="0 * * * *", zone="Europe/Paris")
    spring = ticks(schedule, at(2026, 3, 29, 0, 30), at(2026, 3, 29, 4, 30))
    assert [tick.isoformat() for tick in spring] == [
        "2026-03-29T01:00:00+01:00",
        "2026-03-29T03:00:00+02:00",  # 02:00 never happens: one real hour after 01:00
        "2026-03-29T04:00:00+02:00",
    ]
    autumn = ticks(schedule, at(2026, 10, 25, 0, 30), at(2026, 10, 25, 3, 30))
    stamps = [tick.timestamp() for tick in autumn]
    assert [b - a for a, b in itertools.pairwise(stamps)] == [3600.0] * 3
    assert len(set(stamps)) == 4  # 01:00, 02:00 (+02:00), 02:00 (+01:00), 03:00


def test_the_tick_id_names_the_schedule_and_the_local_time() -> None:
    schedule = Schedule("nightly", Report(), cron="30 2 * * *", zone="Europe/Paris")
    tick = at(2026, 3, 29, 3, 0)
    assert schedule.tick_id(tick) == "nightly@2026-03-29T03:00:00+02:00"
    made = Schedule("nightly", lambda when: Report(when.date().isoformat()), every=60)
    assert made.payload(at(2026, 3, 29, 3, 0)) == Report("2026-03-29")


def test_wrong_schedules_are_told_at_start_up_in_one_sentence_each() -> None:
    @command_handler
    def report(command: Report) -> None:
        pass

    with pytest.raises(ConfigurationError) as raised:
        Messaging(
            handlers=[report],
            database="sqlite://",
            schedules=[
                Schedule("a", Report(), cron="61 * * * *"),
                Schedule("b", Report(), every=0),
                Schedule("c", Report()),
                Schedule("d", Report(), every=5, zone="Mars/Olympus"),
                Schedule("e", Report(), every=5, kind="query"),
                Schedule("f", Report(), every=5),
                Schedule("f", Report(), every=10),
            ],
        )
    text = str(raised.value)
    assert "schedule 'a' has a cron expression '61 * * * *' that is wrong" in text
    assert "schedule 'b' has every=0; give a positive interval" in text
    assert "schedule 'c' needs exactly one of cron='...' and every=<seconds>" in text
    assert "schedule 'd' has an unknown time zone 'Mars/Olympus'" in text
    assert "schedule 'e' has kind='query'; use 'command' or 'event'" in text
    assert "two schedules are named 'f'" in text


def test_schedules_need_a_database() -> None:
    with pytest.raises(ConfigurationError, match=r"schedules need Messaging\(database=\.\.\.\)"):
        Messaging(schedules=[Schedule("a", Report(), every=5)])


class NobodyHandles:
    pass


def test_a_schedule_whose_command_nobody_handles_is_told_at_start_up() -> None:
    with pytest.raises(ConfigurationError) as raised:
        Messaging(
            database="sqlite://",
            schedules=[
                Schedule("orphan", NobodyHandles(), every=5),
                Schedule("odd", Report(), every=5, via=dict),
            ],
        )
    text = str(raised.value)
    assert "schedule 'orphan' sends a command nobody handles" in text
    assert "schedule 'odd' has via=<class 'dict'>; give a CommandBus or EventBus class" in text
