"""A synchronous command whose handler fails: the caller gets the error, and the command waits
on the error channel for a worker to retry it, or for a replay from the dead letters."""

from dataclasses import dataclass

import msgspec
import pytest
from recovery_app import effects
from recovery_support import effect_counts, make_tables, waiting
from sqlalchemy import insert
from sqlalchemy.orm import Session

from busway import RetryPolicy, SqlChannel, command_handler
from busway.testing import FakeClock, record

REFUND = f"{__name__}.Cashier.refund"


@dataclass
class Refund:
    id: str


class Declined(Exception):
    pass


class Cashier:
    def __init__(self) -> None:
        self.failing = True
        self.calls: list[str] = []

    @command_handler
    def refund(self, command: Refund, session: Session) -> None:
        self.calls.append(command.id)
        session.execute(insert(effects).values(job=command.id, worker="cashier"))
        if self.failing:
            raise Declined(f"the bank declined {command.id}")


@pytest.fixture
def cashier(make_messaging, database_url):
    make_tables(database_url)
    clock = FakeClock()
    cashier = Cashier()
    messaging = make_messaging(
        [cashier],
        [SqlChannel("failed")],
        clock=clock,
        command_failures="failed",
        retry=RetryPolicy(retries=2, initial_delay=5, jitter=0),
    )
    return cashier, messaging, clock


async def send(messaging, front, command):
    if front == "asyncio":
        await messaging.command_bus.asend(command)
    else:
        messaging.command_bus.send(command)


@pytest.mark.parametrize("front", ["sync", "asyncio"])
async def test_a_failed_command_raises_and_waits_on_the_error_channel(cashier, database_url, front):
    cashier, messaging, _ = cashier
    with record(messaging) as recorded, pytest.raises(Declined, match="declined r-1"):
        await send(messaging, front, Refund("r-1"))

    assert effect_counts(database_url) == {}  # the failed handler's writes rolled back
    (kept,) = waiting(database_url, "failed")
    assert msgspec.json.decode(kept.body) == {"id": "r-1"}
    assert kept.headers["id"] == recorded.messages()[0].headers.id
    assert kept.headers["busway.handler"] == REFUND
    assert kept.headers["busway.attempt"] == 1  # the caller's try was the first attempt

    cashier.failing = False
    result = messaging.run("failed")

    assert (result.handled, result.failed) == (1, 0)
    assert cashier.calls == ["r-1", "r-1"]
    assert effect_counts(database_url) == {"r-1": 1}
    assert messaging.channel("failed").depth() == 0


def test_a_failed_command_is_retried_then_kept_as_a_dead_letter_and_replayed(cashier, database_url):
    cashier, messaging, clock = cashier
    with pytest.raises(Declined):
        messaging.command_bus.send(Refund("r-1"))

    assert messaging.run("failed").failed == 1  # attempt 2: retried in 10 s
    (retry,) = waiting(database_url, "failed")
    assert retry.headers["busway.attempt"] == 2
    clock.advance(10)
    assert messaging.run("failed").failed == 1  # attempt 3: out of retries

    (letter,) = messaging.dead_letters.list()
    assert (letter.channel, letter.handler, letter.attempts) == ("failed", REFUND, 3)
    assert letter.error_message == "the bank declined r-1"
    assert cashier.calls == ["r-1"] * 3
    assert effect_counts(database_url) == {}

    cashier.failing = False
    assert messaging.dead_letters.replay([letter.id]) == 1
    assert messaging.run("failed").handled == 1
    assert effect_counts(database_url) == {"r-1": 1}
    assert messaging.dead_letters.list() == []


def test_a_command_that_succeeds_leaves_nothing_behind(cashier, database_url):
    cashier, messaging, _ = cashier
    cashier.failing = False

    messaging.command_bus.send(Refund("r-1"))

    assert effect_counts(database_url) == {"r-1": 1}
    assert messaging.channel("failed").depth() == 0
