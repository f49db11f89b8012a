"""A long-running worker waits out a failing channel instead of dying with it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from busway import CommandBus, InMemoryChannel, Messaging, asynchronous, command_handler
from busway.channels.base import AsyncHandle, Handle


@dataclass
class Ping:
    number: int


@asynchronous("flaky")
class FlakyBus(CommandBus):
    pass


class FlakyChannel(InMemoryChannel):
    """An in-memory channel whose first consumes fail as a lost connection would."""

    def __init__(self, name: str, failures: int) -> None:
        super().__init__(name)
        self.failures = failures

    def consume(self, handle: Handle, max_messages: int, wait: float) -> int:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the server went away")
        return super().consume(handle, max_messages, wait)

    async def aconsume(self, handle: AsyncHandle, max_messages: int, wait: float) -> int:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the server went away")
        return await super().aconsume(handle, max_messages, wait)


@pytest.fixture(autouse=True)
def short_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("busway.worker.state.FIRST_OUTAGE_PAUSE", 0.01)


def build(failures: int) -> tuple[Messaging, list[int]]:
    seen: list[int] = []

    @command_handler
    def ping(command: Ping) -> None:
        seen.append(command.number)

    messaging = Messaging(handlers=[ping], channels=[FlakyChannel("flaky", failures)])
    messaging.gateway(FlakyBus).send(Ping(1))
    return messaging, seen


def test_a_worker_that_runs_until_stopped_waits_out_a_failing_channel(
    caplog: pytest.LogCaptureFixture,
) -> None:
    messaging, seen = build(failures=3)

    result = messaging.run("flaky", until_empty=False, limit=1)

    assert seen == [1]
    assert result.reason == "limit"
    assert caplog.text.count("channel 'flaky' failed (ConnectionError") == 3


async def test_an_asyncio_worker_waits_out_a_failing_channel_too() -> None:
    messaging, seen = build(failures=2)

    result = await messaging.arun("flaky", until_empty=False, limit=1)

    assert seen == [1]
    assert result.reason == "limit"


def test_a_run_until_empty_reports_a_failing_channel_at_once() -> None:
    messaging, seen = build(failures=1)

    with pytest.raises(ConnectionError, match="the server went away"):
        messaging.run("flaky")

    assert seen == []
