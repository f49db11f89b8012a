"""Publishers, relays and workers carry on when RabbitMQ restarts in the middle of a run."""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import aiormq
import amqp_worker
import pytest
from amqp_support import Broker, Ping, Pings, effects, wait_until
from amqp_support import broker as broker  # fixtures: pytest finds them by name
from amqp_support import queues as queues
from amqp_support import rabbitmq_in_use as rabbitmq_in_use
from sqlalchemy import insert
from sqlalchemy.orm import Session

from busway import EventBus, Messaging, RetryPolicy, asynchronous, event_handler, ordered_by
from busway.amqp import AmqpChannel


class RabbitServer:
    """The RabbitMQ node on loopback; its application stopped and started with rabbitmqctl."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def up(self) -> bool:
        try:
            self.broker.count("busway-test-probe")
        except (OSError, aiormq.exceptions.AMQPError):
            return False
        return True

    def _wait(self, up: bool, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.up() != up:
            if time.monotonic() > deadline:
                raise TimeoutError(f"RabbitMQ did not {'start' if up else 'stop'} in {timeout}s")
            time.sleep(0.1)

    def stop(self) -> None:
        subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True)
        self._wait(up=False)

    def start(self) -> None:
        subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True)
        self._wait(up=True)


@pytest.fixture
def rabbit_server(
    broker: Broker, amqp_url: str, rabbitmq_in_use: IO[str]
) -> Iterator[RabbitServer]:
    """RabbitMQ to restart; it is running when the test ends, whatever happens."""
    if not shutil.which("rabbitmqctl") or "@127.0.0.1" not in amqp_url:
        message = "restarting RabbitMQ needs rabbitmqctl and the broker on this machine"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI: {message}", pytrace=False)
        pytest.skip(message)
    server = RabbitServer(broker)
    fcntl.flock(rabbitmq_in_use, fcntl.LOCK_EX)  # once no other test run is using RabbitMQ
    try:
        yield server
    finally:
        if not server.up():
            server.start()


def test_publishers_and_workers_carry_on_when_rabbitmq_restarts(
    rabbit_server: RabbitServer, amqp_url: str, queues: Callable[[], str], tmp_path: Path
) -> None:
    """Persistent messages on durable queues survive; what went unconfirmed is published
    again (by a send, or by a relay's batch), what went unacknowledged is delivered again,
    and the inbox absorbs the repeats."""
    seen: dict[str, list[int]] = {"sync": [], "asyncio": []}
    total = 150

    def make(side: str) -> tuple[Messaging, Messaging]:
        queue = queues()

        @event_handler
        def ping(event: Ping, session: Session) -> None:
            session.execute(insert(amqp_worker.effects).values(number=event.number, worker=side))
            seen[side].append(event.number)

        worker_side = Messaging(
            handlers=[ping],
            channels=[AmqpChannel("pings", amqp_url, queue=queue, reconnect_interval=0.2)],
            database=f"sqlite:///{tmp_path / (side + '.db')}",
            retry=RetryPolicy(retries=0),  # a repeated effect would fail on its number
        )
        worker_side.setup()
        with worker_side.database_engine.begin() as connection:
            amqp_worker.metadata.create_all(connection)
        publisher_side = Messaging(
            channels=[AmqpChannel("pings", amqp_url, queue=queue, reconnect_interval=0.2)]
        )
        return worker_side, publisher_side

    (sync_worker, sync_publisher), (async_worker, async_publisher) = make("sync"), make("asyncio")
    # And an outbox relayed to RabbitMQ, consumed by another worker.
    relay_database, relay_queue = f"sqlite:///{tmp_path / 'relay.db'}", queues()
    relay, consumer = (
        amqp_worker.build(relay_database, amqp_url, relay_queue, worker="relay") for _ in "ab"
    )
    relay.setup()
    with relay.database_engine.begin() as connection:
        amqp_worker.metadata.create_all(connection)
    workers = [
        sync_worker.worker("pings", until_empty=False, poll_interval=0.2),
        async_worker.worker("pings", until_empty=False, poll_interval=0.2),
        relay.worker("outbox", until_empty=False, poll_interval=0.2),
        consumer.worker("rabbit", until_empty=False, poll_interval=0.2),
    ]

    def publish_sync() -> None:
        for number in range(total):
            sync_publisher.gateway(Pings).publish(Ping(number))
            time.sleep(0.01)

    async def publish_async() -> None:
        try:
            for number in range(total):
                await async_publisher.gateway(Pings).apublish(Ping(number))
                await asyncio.sleep(0.01)
        finally:
            await async_publisher.aclose()

    def publish_to_the_outbox() -> None:
        for number in range(total):
            with relay.transaction():
                relay.gateway(amqp_worker.OutboxEvents).publish(amqp_worker.Recorded(number))
            time.sleep(0.01)

    async def run_async_worker() -> None:
        try:
            await workers[1].arun()
        finally:
            await async_worker.aclose()

    def progress() -> int:
        return min(len(seen["sync"]), len(seen["asyncio"]), len(effects(relay_database)))

    threads = [
        threading.Thread(target=workers[0].run),
        threading.Thread(target=asyncio.run, args=(run_async_worker(),)),
        threading.Thread(target=workers[2].run),
        threading.Thread(target=workers[3].run),
        threading.Thread(target=publish_sync),
        threading.Thread(target=asyncio.run, args=(publish_async(),)),
        threading.Thread(target=publish_to_the_outbox),
    ]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: progress() >= 30, "the first messages")
        rabbit_server.stop()
        time.sleep(0.5)
        rabbit_server.start()
        for thread in threads[4:]:
            thread.join(timeout=60)
        wait_until(lambda: progress() >= total, "every message", timeout=60)
    finally:
        for worker in workers:
            worker.stop()
        for thread in threads:
            thread.join(timeout=30)
        for messaging in (sync_worker, sync_publisher, relay, consumer):
            messaging.close()

    assert all(not thread.is_alive() for thread in threads)
    for side, messaging in (("sync", sync_worker), ("asyncio", async_worker)):
        assert effects(messaging.database_engine.url) == dict.fromkeys(range(total), side)
        assert sorted(seen[side]) == list(range(total))  # each once
        assert messaging.dead_letters.list() == []
    assert effects(relay_database) == dict.fromkeys(range(total), "relay")
    assert relay.channel("outbox").depth() == 0
    assert relay.dead_letters.list() == []


@ordered_by("key")
@dataclass
class Keyed:
    key: str
    seq: int


@asynchronous("steps")
class KeyedSteps(EventBus):
    pass


def test_partitioned_consumers_keep_each_keys_order_when_rabbitmq_restarts(
    rabbit_server: RabbitServer,
    amqp_url: str,
    queues: Callable[..., str],
    broker: Broker,
    tmp_path: Path,
) -> None:
    """Two links share the partitions; the restart takes their connections, owner queues
    and members queue's consumers away; they join again, share again, and every key's
    messages take effect once each, in order (the inbox absorbs what comes again)."""
    keys, per_key = 8, 40
    queue = queues(4)
    seen: dict[str, list[int]] = {}
    lock = threading.Lock()

    @event_handler
    def step(event: Keyed) -> None:
        with lock:
            seen.setdefault(event.key, []).append(event.seq)

    def channel() -> AmqpChannel:
        return AmqpChannel("steps", amqp_url, queue=queue, partitions=4, reconnect_interval=0.2)

    workers_side = [
        Messaging(
            handlers=[step],
            channels=[channel()],
            database=f"sqlite:///{tmp_path / 'inbox.db'}",
        )
        for _ in range(2)
    ]
    workers_side[0].setup()
    publisher = Messaging(channels=[channel()])
    workers = [
        messaging.worker("steps", until_empty=False, poll_interval=0.2)
        for messaging in workers_side
    ]
    threads = [threading.Thread(target=worker.run) for worker in workers]

    def handled() -> int:
        with lock:
            return len({(key, seq) for key, seqs in seen.items() for seq in seqs})

    def publish(seqs: range) -> None:
        for seq in seqs:
            for number in range(keys):
                publisher.gateway(KeyedSteps).publish(Keyed(f"key-{number}", seq))

    for thread in threads:
        thread.start()
    try:
        publish(range(per_key // 2))
        wait_until(lambda: broker.members(queue) == 2, "both links to join")
        wait_until(lambda: handled() >= keys * 5, "the first messages")
        rabbit_server.stop()
        time.sleep(0.5)
        rabbit_server.start()
        publish(range(per_key // 2, per_key))
        wait_until(lambda: handled() == keys * per_key, "every message", timeout=90)
        wait_until(lambda: broker.members(queue) == 2, "both links to join again")
    finally:
        for worker in workers:
            worker.stop()
        for thread in threads:
            thread.join(timeout=30)
        for messaging in (*workers_side, publisher):
            messaging.close()

    assert all(not thread.is_alive() for thread in threads)
    assert seen == {f"key-{number}": list(range(per_key)) for number in range(keys)}
