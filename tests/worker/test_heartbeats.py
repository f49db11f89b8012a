"""A worker's heartbeat while it runs, in process: ``Messaging.workers()`` and
``Messaging.health()``, the in-memory store of an application without a database, a beat
that fails, and the beat's absence from the path of each message."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from busway import (
    CommandBus,
    ConfigurationError,
    InMemoryChannel,
    Messaging,
    RunResult,
    SqlChannel,
    WorkerRecord,
    asynchronous,
    command_handler,
)
from busway.testing import FakeClock
from dbsupport import drop_tables, statements_sent

WAIT = 30.0
MakeMessaging = Callable[..., Messaging]


@dataclass
class Pack:
    box: int


@asynchronous("packing")
class Packing(CommandBus):
    pass


class Packer:
    """A handler that holds its first box until the test lets go."""

    def __init__(self) -> None:
        self.holding = threading.Event()
        self.release = threading.Event()
        self.packed: list[int] = []

    @command_handler
    def pack(self, command: Pack) -> None:
        if not self.packed and not self.release.is_set():
            self.holding.set()
            assert self.release.wait(WAIT), "the test never let the handler go"
        self.packed.append(command.box)


def eventually(what: str, condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds, asking again every few milliseconds."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


@contextmanager
def running(
    messaging: Messaging, packer: Packer, runner: str = "sync", **options: Any
) -> Iterator[list[RunResult]]:
    """A worker on ``packing`` in a thread, holding its first message while the block runs;
    let go and joined at the end (its result appended to the list yielded)."""
    results: list[RunResult] = []
    worker = messaging.worker("packing", **options)

    def run() -> None:
        if runner == "sync":
            results.append(worker.run())
        else:
            results.append(asyncio.run(worker.arun()))

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert packer.holding.wait(WAIT), "the worker never took the first message"
        yield results
    finally:
        packer.release.set()
        thread.join(WAIT)
    assert results, "the run did not finish"


def send(messaging: Messaging, *boxes: int) -> None:
    bus = messaging.gateway(Packing)
    for box in boxes:
        bus.send(Pack(box))


@pytest.fixture
def packer() -> Packer:
    return Packer()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def memory_app(packer: Packer, clock: FakeClock) -> Messaging:
    return Messaging(
        handlers=[packer],
        channels=[InMemoryChannel("packing"), InMemoryChannel("unused")],
        clock=clock,
    )


# -- without a database: this process's workers ---------------------------------------------


@pytest.mark.parametrize("runner", ["sync", "asyncio"])
def test_a_running_worker_is_listed_with_what_it_does(
    memory_app: Messaging, packer: Packer, clock: FakeClock, runner: str
) -> None:
    send(memory_app, 1, 2)
    started = clock()

    with running(memory_app, packer, runner) as results:
        eventually("the first beat", lambda: bool(memory_app.workers()))
        (worker,) = memory_app.workers()

    assert isinstance(worker, WorkerRecord)
    assert (worker.host, worker.pid, worker.channels) == (
        socket.gethostname(),
        os.getpid(),
        ("packing",),
    )
    assert (worker.started, worker.interval, worker.alive) == (started, 5.0, True)
    assert (results[0].handled, packer.packed) == (2, [1, 2])
    assert memory_app.workers() == [], "a worker that stopped is removed"


def test_a_worker_goes_silent_after_three_missed_beats(
    memory_app: Messaging, packer: Packer, clock: FakeClock
) -> None:
    send(memory_app, 1)

    with running(memory_app, packer, heartbeat_interval=60.0):
        eventually("the first beat", lambda: bool(memory_app.workers()))
        clock.advance(179)
        alive = memory_app.workers()
        clock.advance(2)
        silent = memory_app.workers()
        own_threshold = memory_app.workers(silent_after=600)

    assert [(worker.alive, worker.silent_for) for worker in alive] == [(True, 179.0)]
    assert [(worker.alive, worker.silent_for) for worker in silent] == [(False, 181.0)]
    assert [worker.alive for worker in own_threshold] == [True]


def test_health_needs_a_live_worker_on_each_channel(
    memory_app: Messaging, packer: Packer, clock: FakeClock
) -> None:
    before = memory_app.health()
    send(memory_app, 1)

    with running(memory_app, packer):
        eventually("the first beat", lambda: bool(memory_app.workers()))
        packing = memory_app.health(channels=["packing"])
        everything = memory_app.health()
        clock.advance(16)  # three missed beats of 5s
        silent = memory_app.health(channels=["packing"])

    assert not before.ok
    assert before.problems == [
        "channel 'packing': no live worker consumes it",
        "channel 'unused': no live worker consumes it",
    ]
    assert packing.ok and bool(packing)
    assert [(channel.channel, channel.workers) for channel in packing.channels] == [("packing", 1)]
    assert everything.problems == ["channel 'unused': no live worker consumes it"]
    assert silent.problems == ["channel 'packing': no live worker consumes it"]


def test_a_worker_without_heartbeats_is_not_listed(memory_app: Messaging, packer: Packer) -> None:
    send(memory_app, 1)

    with running(memory_app, packer, heartbeat_interval=None):
        listed = memory_app.workers()

    assert listed == []


@pytest.mark.parametrize("interval", [0, -1.5])
def test_a_heartbeat_interval_must_be_positive(memory_app: Messaging, interval: float) -> None:
    with pytest.raises(ConfigurationError, match="must be a positive number of seconds"):
        memory_app.worker("packing", heartbeat_interval=interval)


# -- with a database ----------------------------------------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql", "mariadb"], indirect=True)
def test_health_reports_a_channel_whose_oldest_message_is_too_old(
    make_messaging: MakeMessaging, packer: Packer, clock: FakeClock
) -> None:
    messaging = make_messaging([packer], [SqlChannel("packing")], clock=clock)
    send(messaging, 1)
    clock.advance(120)

    health = messaging.health(max_age=60)

    assert not health.ok
    (channel,) = health.channels
    assert (channel.channel, channel.depth, channel.oldest_age, channel.workers) == (
        "packing",
        1,
        120.0,
        0,
    )
    assert health.problems == [
        "channel 'packing': its oldest message is 120.0s old (more than 60s)",
        "channel 'packing': no live worker consumes it",
    ]
    assert messaging.health(max_age=600).problems == [
        "channel 'packing': no live worker consumes it"
    ]


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql", "mariadb"], indirect=True)
def test_beats_are_not_made_per_message(make_messaging: MakeMessaging, packer: Packer) -> None:
    """300 messages, one beat: the heartbeat's statements are the first beat (an UPDATE that
    finds no row, then the INSERT) and the removal, however many messages go by."""
    packer.release.set()
    messaging = make_messaging([packer], [SqlChannel("packing")])
    send(messaging, *range(300))

    with statements_sent() as sent:
        result = messaging.worker("packing", heartbeat_interval=3600).run()

    assert result.handled == 300
    beats = [statement.split()[0] for statement in sent if "BUSWAY_WORKERS" in statement]
    assert beats == ["UPDATE", "INSERT", "DELETE"]


class Records(logging.Handler):
    """The records of a logger, each also setting the event its text names."""

    def __init__(self, *signs: str) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.seen = {sign: threading.Event() for sign in signs}

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        for sign, event in self.seen.items():
            if sign in record.getMessage():
                event.set()


def failures(logs: Records) -> list[logging.LogRecord]:
    return [record for record in logs.records if "heartbeat failed" in record.getMessage()]


@pytest.fixture
def worker_logs() -> Iterator[Records]:
    records = Records("heartbeat failed", "heartbeats recorded again")
    logger = logging.getLogger("busway.worker")
    logger.addHandler(records)
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    yield records
    logger.removeHandler(records)
    logger.setLevel(previous)


@pytest.mark.parametrize("database_url", ["postgresql", "mariadb"], indirect=True)
def test_a_failing_beat_is_logged_and_the_worker_goes_on(
    make_messaging: MakeMessaging,
    database_url: str,
    packer: Packer,
    worker_logs: Records,
) -> None:
    """The heartbeats' table is gone: each beat fails, the first says so, the worker goes on
    handling; once the table is back, the beats are recorded again."""
    messaging = make_messaging([packer], [SqlChannel("packing")], auto_setup=False)
    send(messaging, 1, 2)
    drop_tables(database_url, "busway_workers")

    with running(messaging, packer, heartbeat_interval=0.02) as results:
        assert worker_logs.seen["heartbeat failed"].wait(WAIT)
        eventually("more failed beats", lambda: len(failures(worker_logs)) >= 3)
        messaging.setup()
        assert worker_logs.seen["heartbeats recorded again"].wait(WAIT)
        listed = messaging.workers()

    assert (results[0].handled, packer.packed) == (2, [1, 2])
    failed = failures(worker_logs)
    assert [record.levelno for record in failed][:3] == [
        logging.WARNING,
        logging.DEBUG,
        logging.DEBUG,
    ]
    assert "table busway_workers does not exist" in failed[0].getMessage()
    assert failed[0].error_type == "SetupRequired"  # type: ignore[attr-defined]
    assert [worker.channels for worker in listed] == [("packing",)]
    assert messaging.workers() == []
