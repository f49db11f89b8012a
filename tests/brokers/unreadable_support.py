"""What the tests of unreadable broker messages share: an application that handles ``Job``s
from the ``jobs`` channel, and the check that every garbage message is one dead letter while
the good messages around it are handled once."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Any

from busway import CommandBus, Messaging, RetryPolicy, asynchronous, command_handler
from busway.channels.base import Channel
from busway.channels.reading import raw_of

UNREADABLE = "busway.errors.UnreadableMessageError"
DEEP = 100_000
NESTED = "{" + '"a":[' * DEEP + "]" * DEEP + "}"


@dataclass
class Job:
    id: str


JOB_TYPE = f"{__name__}.Job"


@asynchronous("jobs")
class JobBus(CommandBus):
    pass


class Jobs:
    def __init__(self) -> None:
        self.done: Counter[str] = Counter()

    @command_handler
    def work(self, job: Job) -> None:
        self.done[job.id] += 1


def build(channel: Channel) -> tuple[Messaging, Jobs]:
    jobs = Jobs()
    messaging = Messaging(handlers=[jobs], channels=[channel], retry=RetryPolicy(retries=0))
    messaging.setup()
    return messaging, jobs


def run(messaging: Messaging, front: str) -> Any:
    """Consume ``jobs`` until it is empty, with ``run`` or (on a loop of its own, whose
    connections are closed before it ends) with ``arun``."""
    if front == "sync":
        return messaging.run("jobs")

    async def main() -> Any:
        try:
            return await messaging.arun("jobs")
        finally:
            await messaging.aclose()

    return asyncio.run(main())


def check(
    messaging: Messaging,
    jobs: Jobs,
    good: list[str],
    unreadable: list[bytes],
    rejected: int,
    result: Any,
) -> None:
    """Every good job handled once; one dead letter for each unreadable message, keeping its
    raw headers, and ``rejected`` others."""
    assert jobs.done == Counter(good)
    letters = messaging.dead_letters.list()
    kept = sorted(
        raw_of(letter.headers) or b"" for letter in letters if letter.error_type == UNREADABLE
    )
    assert kept == sorted(unreadable)
    assert len(letters) == len(unreadable) + rejected, [letter.error_message for letter in letters]
    assert all(letter.channel == "jobs" and letter.attempts == 1 for letter in letters)
    assert (result.handled, result.failed) == (len(good) + len(letters), len(letters))
