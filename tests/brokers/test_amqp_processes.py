"""Worker processes killed with SIGKILL mid-relay and mid-handler lose and repeat nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import amqp_worker
import pytest
from amqp_support import Broker, effects
from amqp_support import broker as broker  # fixtures: pytest finds them by name
from amqp_support import queues as queues
from amqp_support import rabbitmq_in_use as rabbitmq_in_use

from busway import Messaging

HERE = Path(__file__).parent


def start(role: str, database: str, amqp_url: str, queue: str, *options: str) -> Any:
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), *sys.path]))
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import amqp_worker; amqp_worker.main()",
            role,
            database,
            amqp_url,
            queue,
            *options,
        ],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: Any, timeout: float = 60) -> None:
    _, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err


def kill_when(marker: Path, process: Any, timeout: float = 30) -> str:
    """Wait for the process to write ``marker``, then kill it with SIGKILL."""
    deadline = time.monotonic() + timeout
    try:
        while not marker.exists():
            if process.poll() is not None:
                _, err = process.communicate()
                pytest.fail(f"the worker exited ({process.returncode}) too early:\n{err}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {marker.name}")
            time.sleep(0.01)
    finally:
        if process.poll() is None:  # a worker that exited early is reported as such
            os.kill(process.pid, signal.SIGKILL)
            process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL
    return marker.read_text()


@pytest.fixture
def processes(
    tmp_path: Path, amqp_url: str, queues: Callable[[], str]
) -> Iterator[tuple[str, str, Messaging]]:
    """A SQLite database and a queue shared with worker processes, and their application."""
    database = f"sqlite:///{tmp_path / 'effects.db'}"
    queue = queues()
    messaging = amqp_worker.build(database, amqp_url, queue)
    messaging.setup()
    with messaging.database_engine.begin() as connection:
        amqp_worker.metadata.create_all(connection)
    yield database, queue, messaging
    messaging.close()


def _record(messaging: Messaging, count: int) -> None:
    events = messaging.gateway(amqp_worker.OutboxEvents)
    with messaging.transaction():
        for number in range(count):
            events.publish(amqp_worker.Recorded(number))


def test_a_relay_killed_between_publish_and_delete_loses_nothing(
    processes: tuple[str, str, Messaging], broker: Broker, amqp_url: str, tmp_path: Path
) -> None:
    database, queue, messaging = processes
    total = 40
    _record(messaging, total)
    marker = tmp_path / "confirmed"

    relay = start("relay", database, amqp_url, queue, "--hang-at", "1", "--marker", str(marker))
    kill_when(marker, relay)

    # RabbitMQ confirmed the whole batch; the outbox never deleted it.
    assert broker.count(queue) == total
    assert messaging.channel("outbox").depth() == total

    finish(start("relay", database, amqp_url, queue))
    assert messaging.channel("outbox").depth() == 0
    assert broker.count(queue) == 2 * total  # each message twice: the inbox absorbs it

    finish(start("consume", database, amqp_url, queue, "--worker", "final"))

    assert effects(database) == {number: "final" for number in range(total)}
    assert broker.count(queue) == 0
    assert messaging.dead_letters.list() == []


def test_consumers_killed_mid_handler_lose_nothing_and_repeat_nothing(
    processes: tuple[str, str, Messaging], broker: Broker, amqp_url: str, tmp_path: Path
) -> None:
    database, queue, messaging = processes
    total = 30
    _record(messaging, total)
    messaging.run("outbox")
    assert broker.count(queue) == total

    # Killed inside its 7th handler: that row was written, never committed.
    inside = tmp_path / "inside"
    consumer = start(
        "consume", database, amqp_url, queue, "--worker", "inside", "--hang-at", "7",
        "--marker", str(inside),
    )  # fmt: skip
    in_hand = int(kill_when(inside, consumer))
    done = effects(database)
    assert len(done) == 6 and in_hand not in done

    # Killed after its 5th handler committed, before RabbitMQ heard of it.
    after = tmp_path / "after"
    consumer = start(
        "consume", database, amqp_url, queue, "--worker", "after", "--hang-at", "5",
        "--after-commit", "--marker", str(after),
    )  # fmt: skip
    committed = int(kill_when(after, consumer))
    done = effects(database)
    assert len(done) == 11 and done[committed] == "after"

    finish(start("consume", database, amqp_url, queue, "--worker", "final"))

    done = effects(database)
    assert sorted(done) == list(range(total))  # each number once: the key allows no more
    assert list(done.values()).count("inside") == 6
    assert list(done.values()).count("after") == 5
    assert broker.count(queue) == 0
    assert messaging.dead_letters.list() == []
