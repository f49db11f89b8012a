import asyncio
import threading
from dataclasses import dataclass
from typing import Any

import pytest

from busway import (
    CommandBus,
    InMemoryChannel,
    Messaging,
    RetryPolicy,
    RunResult,
    asynchronous,
    command_handler,
)
from busway.errors import UnknownChannelError


@dataclass
class Job:
    number: int
    fail: bool = False


@dataclass
class Chain:
    step: int
    last: int


@asynchronous("jobs")
class JobBus(CommandBus):
    pass


class Jobs:
    def __init__(self) -> None:
        self.done: list[int] = []
        self.lock = threading.Lock()

    def handlers(self) -> list[Any]:
        @command_handler
        def work(job: Job) -> None:
            if job.fail:
                raise RuntimeError(f"job {job.number} failed")
            with self.lock:
                self.done.append(job.number)

        @command_handler
        def chain(link: Chain, bus: JobBus) -> None:
            with self.lock:
                self.done.append(link.step)
            if link.step < link.last:
                bus.send(Chain(link.step + 1, link.last))

        return [work, chain]


def _setup(clock: Any, count: int = 0, **options: Any) -> tuple[Messaging, Jobs, InMemoryChannel]:
    jobs = Jobs()
    channel = InMemoryChannel("jobs")
    messaging = Messaging(
        handlers=jobs.handlers(),
        channels=[channel, InMemoryChannel("other")],
        clock=clock,
        retry=RetryPolicy(retries=0),
        **options,
    )
    for number in range(count):
        messaging.gateway(JobBus).send(Job(number))
    return messaging, jobs, channel


def test_a_run_stops_when_the_channel_is_empty(clock: Any) -> None:
    messaging, jobs, channel = _setup(clock, 5)

    result = messaging.run("jobs")

    assert isinstance(result, RunResult)
    assert (result.handled, result.failed, result.reason) == (5, 0, "empty")
    assert jobs.done == [0, 1, 2, 3, 4]
    assert channel.depth() == 0


def test_an_empty_channel_ends_a_run_at_once(clock: Any) -> None:
    messaging, _, _ = _setup(clock)

    result = messaging.run("jobs")

    assert (result.handled, result.reason) == (0, "empty")


def test_limit_stops_after_that_many_messages(clock: Any) -> None:
    messaging, jobs, channel = _setup(clock, 5)

    result = messaging.run("jobs", limit=2)

    assert (result.handled, result.reason) == (2, "limit")
    assert jobs.done == [0, 1]
    assert channel.depth() == 3

    rest = messaging.run("jobs", limit=10)
    assert (rest.handled, rest.reason) == (3, "empty")
    assert jobs.done == [0, 1, 2, 3, 4]


def test_limit_applies_when_not_stopping_at_empty(clock: Any) -> None:
    messaging, jobs, channel = _setup(clock, 3)

    result = messaging.run("jobs", limit=3, until_empty=False)

    assert (result.handled, result.reason) == (3, "limit")
    assert jobs.done == [0, 1, 2]
    assert channel.depth() == 0


def test_limit_larger_than_a_batch(clock: Any) -> None:
    messaging, jobs, _ = _setup(clock, 250)

    result = messaging.run("jobs", limit=230)

    assert (result.handled, result.reason) == (230, "limit")
    assert jobs.done == list(range(230))


def test_a_time_limit_of_zero_stops_before_the_first_message(clock: Any) -> None:
    messaging, jobs, channel = _setup(clock, 3)

    result = messaging.run("jobs", time_limit=0)

    assert (result.handled, result.reason) == (0, "time-limit")
    assert jobs.done == []
    assert channel.depth() == 3


def test_a_generous_time_limit_lets_the_run_finish(clock: Any) -> None:
    messaging, jobs, _ = _setup(clock, 3)

    result = messaging.run("jobs", time_limit=3600)

    assert (result.handled, result.reason) == (3, "empty")
    assert jobs.done == [0, 1, 2]


def test_stop_on_failure_stops_after_the_failed_message(clock: Any) -> None:
    messaging, jobs, channel = _setup(clock)
    bus = messaging.gateway(JobBus)
    bus.send(Job(0))
    bus.send(Job(1, fail=True))
    bus.send(Job(2))

    result = messaging.run("jobs", stop_on_failure=True)

    assert (result.handled, result.failed, result.reason) == (2, 1, "failure")
    assert jobs.done == [0]
    assert channel.depth() == 1
    assert len(messaging.dead_letters.list()) == 1


def test_without_stop_on_failure_a_failure_does_not_stop_the_run(clock: Any) -> None:
    messaging, jobs, _ = _setup(clock)
    bus = messaging.gateway(JobBus)
    bus.send(Job(0, fail=True))
    bus.send(Job(1))

    result = messaging.run("jobs")

    assert (result.handled, result.failed, result.reason) == (2, 1, "empty")
    assert jobs.done == [1]


def test_a_run_over_several_channels(clock: Any) -> None:
    @asynchronous("other")
    class OtherBus(CommandBus):
        pass

    messaging, jobs, _ = _setup(clock, 2)
    messaging.gateway(OtherBus).send(Job(10))

    result = messaging.run(["jobs", "other"])

    assert result.handled == 3
    assert sorted(jobs.done) == [0, 1, 10]


def test_a_handler_that_stops_its_worker_finishes_its_message_first(clock: Any) -> None:
    jobs = Jobs()
    worker_box: list[Any] = []

    @command_handler
    def stopper(job: Job) -> None:
        jobs.done.append(job.number)
        worker_box[0].stop()

    messaging = Messaging(handlers=[stopper], channels=[InMemoryChannel("jobs")], clock=clock)
    for number in range(3):
        messaging.gateway(JobBus).send(Job(number))
    worker = messaging.worker("jobs")
    worker_box.append(worker)

    result = worker.run()

    assert (result.handled, result.reason) == (1, "stopped")
    assert jobs.done == [0]
    assert messaging.channel("jobs").depth() == 2


def test_progress_is_reported_after_each_message(clock: Any) -> None:
    messaging, _, _ = _setup(clock, 3)
    seen: list[int] = []

    worker = messaging.worker("jobs", on_progress=lambda result: seen.append(result.handled))
    worker.run()

    assert seen == [1, 2, 3]


def test_running_an_unknown_channel_is_an_error_naming_the_known_ones(clock: Any) -> None:
    messaging, _, _ = _setup(clock)

    with pytest.raises(UnknownChannelError) as error:
        messaging.run("job")

    assert str(error.value) == (
        "no channel is named 'job' (defined: jobs, other); check the name or add the channel"
    )


# -- concurrency ----------------------------------------------------------------------------


def test_concurrent_consumers_handle_everything_once(clock: Any) -> None:
    messaging, jobs, channel = _setup(clock, 300)

    result = messaging.run("jobs", concurrency=2)

    assert (result.handled, result.reason) == (300, "empty")
    assert sorted(jobs.done) == list(range(300))
    assert channel.depth() == 0


def test_concurrent_consumers_do_not_stop_while_a_message_in_hand_sends_more(
    clock: Any,
) -> None:
    for _ in range(10):
        messaging, jobs, channel = _setup(clock)
        messaging.gateway(JobBus).send(Chain(0, 200))

        result = messaging.run("jobs", concurrency=2)

        assert jobs.done == list(range(201))
        assert (result.handled, result.reason) == (201, "empty")
        assert channel.depth() == 0


def test_concurrent_consumers_respect_the_limit(clock: Any) -> None:
    for _ in range(10):
        messaging, jobs, channel = _setup(clock, 40)

        result = messaging.run("jobs", concurrency=3, limit=5)

        assert (result.handled, result.reason) == (5, "limit")
        assert len(jobs.done) == 5
        assert channel.depth() == 35


async def test_concurrent_asyncio_consumers_respect_the_limit(clock: Any) -> None:
    done: list[int] = []

    @command_handler
    async def work(job: Job) -> None:
        await asyncio.sleep(0)
        done.append(job.number)

    channel = InMemoryChannel("jobs")
    messaging = Messaging(handlers=[work], channels=[channel], clock=clock)
    for number in range(20):
        await messaging.gateway(JobBus).asend(Job(number))

    result = await messaging.arun("jobs", concurrency=3, limit=5)

    assert (result.handled, result.reason) == (5, "limit")
    assert sorted(done) == [0, 1, 2, 3, 4]
    assert channel.depth() == 15
    assert (await messaging.arun("jobs", concurrency=3)).handled == 15
    assert sorted(done) == list(range(20))


async def test_arun_consumes_on_the_event_loop(clock: Any) -> None:
    messaging, jobs, channel = _setup(clock, 4)

    result = await messaging.arun("jobs", limit=3)

    assert (result.handled, result.reason) == (3, "limit")
    assert (await messaging.arun("jobs")).handled == 1
    assert jobs.done == [0, 1, 2, 3]
    assert channel.depth() == 0


async def test_arun_stop_on_failure_and_time_limit(clock: Any) -> None:
    messaging, jobs, channel = _setup(clock)
    bus = messaging.gateway(JobBus)
    await bus.asend(Job(0, fail=True))
    await bus.asend(Job(1))

    assert (await messaging.arun("jobs", time_limit=0)).reason == "time-limit"
    result = await messaging.arun("jobs", stop_on_failure=True)

    assert (result.handled, result.failed, result.reason) == (1, 1, "failure")
    assert channel.depth() == 1
    assert jobs.done == []


async def test_arun_with_concurrency_waits_for_messages_in_hand(clock: Any) -> None:
    done: list[int] = []

    @command_handler
    async def chain(link: Chain, bus: JobBus) -> None:
        await asyncio.sleep(0)
        done.append(link.step)
        if link.step < link.last:
            await bus.asend(Chain(link.step + 1, link.last))

    messaging = Messaging(handlers=[chain], channels=[InMemoryChannel("jobs")], clock=clock)
    await messaging.gateway(JobBus).asend(Chain(0, 20))

    result = await messaging.arun("jobs", concurrency=3)

    assert done == list(range(21))
    assert (result.handled, result.reason) == (21, "empty")
