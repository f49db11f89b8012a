"""Worker processes killed with SIGKILL mid-relay and mid-handler lose and repeat nothing."""

from __future__ import annotations

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
from workers import finish, kill_when, start_worker

HERE = Path(__file__).parent


def start(role: str, database: str, amqp_url: str, queue: str, *options: str) -> Any:
    return start_worker(HERE, "amqp_worker", role, database, amqp_url, queue, *options)


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
