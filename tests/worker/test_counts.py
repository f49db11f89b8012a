"""A run's counts: deliveries handled and failed, the delayed retries and the dead letters
their failures made, told apart, on the sync and the asyncio path."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from busway import (
    EventBus,
    InMemoryChannel,
    Messaging,
    RetryPolicy,
    RunResult,
    asynchronous,
    event_handler,
)


@dataclass
class Parcel:
    label: str
    failures: int
    "How many times each handler fails on it before succeeding (-1: always)."


@asynchronous("parcels")
class Parcels(EventBus):
    pass


class Desk:
    def __init__(self) -> None:
        self.tries: dict[tuple[str, str], int] = {}

    def _try(self, who: str, parcel: Parcel) -> None:
        key = (who, parcel.label)
        self.tries[key] = self.tries.get(key, 0) + 1
        if parcel.failures < 0 or self.tries[key] <= parcel.failures:
            raise ValueError(f"{who} cannot take {parcel.label} yet")

    @event_handler
    def weigh(self, parcel: Parcel) -> None:
        self._try("weigh", parcel)

    @event_handler
    def stamp(self, parcel: Parcel) -> None:
        self._try("stamp", parcel)


def shipped(*parcels: Parcel) -> Messaging:
    messaging = Messaging(
        handlers=[Desk()],
        channels=[InMemoryChannel("parcels")],
        retry=RetryPolicy(retries=2, initial_delay=0, jitter=0),
    )
    bus = messaging.gateway(Parcels)
    for parcel in parcels:
        bus.publish(parcel)
    return messaging


def counts(result: RunResult) -> tuple[int, int, int, int]:
    return result.handled, result.failed, result.retried, result.dead_lettered


@pytest.fixture(params=["sync", "asyncio"])
def run(request: pytest.FixtureRequest) -> Callable[[Messaging], RunResult]:
    if request.param == "sync":
        return lambda messaging: messaging.run("parcels")
    return lambda messaging: asyncio.run(messaging.arun("parcels"))


def test_a_run_without_failures_counts_only_handled(run: Callable[[Messaging], RunResult]) -> None:
    result = run(shipped(Parcel("a", 0), Parcel("b", 0)))

    assert counts(result) == (2, 0, 0, 0)


def test_retries_then_success_count_no_dead_letter(run: Callable[[Messaging], RunResult]) -> None:
    """Both handlers fail twice: the first delivery retries each (2 retries); each retry is a
    delivery of its own, for one handler."""
    result = run(shipped(Parcel("a", 2)))

    # deliveries: the event, then weigh's and stamp's retries twice each; the last two succeed
    assert counts(result) == (5, 3, 4, 0)


def test_each_handler_that_gives_up_is_a_dead_letter(run: Callable[[Messaging], RunResult]) -> None:
    result = run(shipped(Parcel("a", -1), Parcel("b", 0)))

    # a: the event and two retries of each handler, then a dead letter for each; b: handled
    assert counts(result) == (6, 5, 4, 2)


def test_an_unroutable_message_is_a_dead_letter(run: Callable[[Messaging], RunResult]) -> None:
    messaging = shipped()
    messaging.gateway(Parcels).publish_with_routing("nobody.listens", {"x": 1})

    result = run(messaging)

    assert counts(result) == (1, 1, 0, 1)
    assert len(messaging.dead_letters.list()) == 1
