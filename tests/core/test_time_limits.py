"""Handler time limits: which limit applies, and what a timed-out handling becomes."""

import asyncio
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

import pytest

from busway import (
    CommandBus,
    HandlerTimeout,
    InMemoryChannel,
    Messaging,
    RetryPolicy,
    asynchronous,
    command_handler,
    handler_timeout,
)

SHORT, LONG = 0.2, 30.0
TAKES = 0.6
"""How long the slow handlers take: past SHORT, well within LONG."""


@dataclass
class Slow:
    id: str


@dataclass
class SlowToo:
    id: str


@asynchronous("jobs")
class Bus(CommandBus):
    pass


@asynchronous("jobs")
@handler_timeout(SHORT)
class HurriedBus(CommandBus):
    pass


class Handlers:
    def __init__(self) -> None:
        self.done: list[str] = []

    @command_handler
    def slow(self, job: Slow) -> None:  # no limit of its own
        time.sleep(TAKES)
        self.done.append(job.id)

    @command_handler
    @handler_timeout(LONG)
    async def patient(self, job: SlowToo) -> None:
        await asyncio.sleep(TAKES)
        self.done.append(job.id)


def messaging_of(handlers: Handlers) -> Messaging:
    return Messaging(
        handlers=[handlers], channels=[InMemoryChannel("jobs")], retry=RetryPolicy(retries=0)
    )


@pytest.mark.parametrize("runner", ["run", "arun"])
@pytest.mark.timeout(120, method="thread")  # leaves SIGALRM to the worker (def under arun)
async def test_the_handlers_limit_wins_then_the_buss_then_the_workers(runner):
    handlers = Handlers()
    messaging = messaging_of(handlers)
    messaging.gateway(Bus).send(Slow("worker default"))  # the worker's SHORT default
    messaging.gateway(HurriedBus).send(Slow("bus"))  # the bus's SHORT
    messaging.gateway(HurriedBus).send(SlowToo("handler"))  # its own LONG beats the bus's
    messaging.gateway(Bus).send(SlowToo("handler again"))  # its own LONG beats the worker's
    if runner == "run":
        result = await asyncio.to_thread(messaging.run, "jobs", handler_timeout=SHORT)
    else:
        result = await messaging.arun("jobs", handler_timeout=timedelta(seconds=SHORT))

    assert (result.handled, result.failed) == (4, 2)
    letters = messaging.dead_letters.list()
    assert sorted(letter.error_type for letter in letters) == ["busway.errors.HandlerTimeout"] * 2
    assert {letter.handler for letter in letters} == {f"{__name__}.Handlers.slow"}
    # (An abandoned def handler thread may still finish its work afterwards.)
    assert {"handler", "handler again"} <= set(handlers.done)


def test_without_any_limit_a_slow_handler_finishes():
    handlers = Handlers()
    messaging = messaging_of(handlers)
    messaging.gateway(Bus).send(Slow("unhurried"))
    assert (messaging.run("jobs").failed, handlers.done) == (0, ["unhurried"])


def test_a_timed_out_handling_is_retried_per_policy_without_instant_retries():
    calls: list[int] = []

    @command_handler
    @handler_timeout(SHORT)
    def hangs(job: Slow) -> None:
        calls.append(1)
        threading.Event().wait(TAKES)

    messaging = Messaging(
        handlers=[hangs],
        channels=[InMemoryChannel("jobs")],
        retry=RetryPolicy(retries=2, instant_retries=3, initial_delay=0, jitter=0),
    )
    messaging.gateway(Bus).send(Slow("x"))
    result = messaging.run("jobs")
    assert (result.handled, result.failed, len(calls)) == (3, 3, 3)
    (letter,) = messaging.dead_letters.list()
    assert letter.attempts == 3


def test_a_policy_that_retries_timeouts_names_them_as_timeout_errors():
    assert issubclass(HandlerTimeout, TimeoutError)
    assert RetryPolicy(retry_on=(TimeoutError,)).retries_error(HandlerTimeout("h", 1))
    message = str(HandlerTimeout("orders.place", 2.5))
    assert "orders.place" in message and "2.5s" in message and "@handler_timeout" in message


@pytest.mark.parametrize("limit", [0, -1, float("inf"), float("nan")])
def test_a_time_limit_is_a_positive_number_of_seconds(limit):
    with pytest.raises(ValueError, match="positive number of seconds"):
        handler_timeout(limit)
    with pytest.raises(ValueError, match="positive number of seconds"):
        Messaging().worker([], handler_timeout=limit)
