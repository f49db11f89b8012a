"""What the RabbitMQ tests share: the lock on RabbitMQ, the broker seen from outside, queues
of a test's own, and the application of the tests.

The tests run against the RabbitMQ server on loopback; override its URL with
``BUSWAY_TEST_AMQP_URL``. An unreachable server skips them, except on CI (``CI=true``), where
it fails them. Each test works on queues of its own, deleted at its end.

Every RabbitMQ test module imports the fixtures it uses from here, ``rabbitmq_in_use`` among
them: pytest finds fixtures in a module's namespace.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aio_pika
import aiormq
import amqp_worker
import pytest
from sqlalchemy import create_engine, select

from busway import EventBus, asynchronous


@pytest.fixture(autouse=True)
def rabbitmq_in_use() -> Iterator[IO[str]]:
    """A lock held shared while a test uses RabbitMQ, exclusively while one restarts it: test
    runs side by side on this machine never restart RabbitMQ under each other's feet."""
    with open(Path(tempfile.gettempdir()) / "busway-rabbitmq-restart.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        yield lock  # closing the file releases the lock


class Broker:
    """RabbitMQ seen from outside the channel under test, through a connection of its own."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _run(self, work: Callable[[aio_pika.abc.AbstractChannel], Awaitable[Any]]) -> Any:
        async def main() -> Any:
            connection = await aio_pika.connect(self.url)
            try:
                return await work(await connection.channel())
            finally:
                await connection.close()

        # In a thread of its own: the calling thread may be running an event loop already.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, main()).result()

    def count(self, queue: str) -> int | None:
        """Messages ready in ``queue``; None if it does not exist."""

        async def count(channel: aio_pika.abc.AbstractChannel) -> int | None:
            try:
                declared = await channel.declare_queue(queue, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return None
            return declared.declaration_result.message_count

        return self._run(count)  # type: ignore[no-any-return]

    def declares(self, queue: str, arguments: dict[str, Any]) -> bool:
        """Whether ``queue`` can be declared durable with ``arguments``: RabbitMQ refuses to
        declare a queue again with other arguments than its own."""

        async def declare(channel: aio_pika.abc.AbstractChannel) -> bool:
            try:
                await channel.declare_queue(queue, durable=True, arguments=arguments)
            except aiormq.exceptions.ChannelPreconditionFailed:
                return False
            return True

        return self._run(declare)  # type: ignore[no-any-return]

    def consumers(self, queue: str) -> int:
        """How many consumers ``queue`` has, active or waiting their turn."""

        async def consumers(channel: aio_pika.abc.AbstractChannel) -> int:
            declared = await channel.declare_queue(queue, passive=True)
            return int(declared.declaration_result.consumer_count or 0)

        return self._run(consumers)  # type: ignore[no-any-return]

    def members(self, queue: str) -> int:
        """How many links consume the partitioned channel of ``queue`` (its members queue's
        consumers), 0 before the first one joins."""
        try:
            return self.consumers(f"busway.{queue}.members")
        except aiormq.exceptions.ChannelNotFoundEntity:
            return 0

    def get(self, queue: str) -> aio_pika.abc.AbstractIncomingMessage | None:
        async def get(channel: aio_pika.abc.AbstractChannel) -> Any:
            declared = await channel.declare_queue(queue, passive=True)
            return await declared.get(no_ack=True, fail=False)

        return self._run(get)  # type: ignore[no-any-return]

    def is_durable(self, queue: str) -> bool:
        """Declaring it again as not durable fails if, and only if, it is durable."""

        async def redeclare(channel: aio_pika.abc.AbstractChannel) -> bool:
            try:
                await channel.declare_queue(queue, durable=False)
            except aiormq.exceptions.ChannelPreconditionFailed:
                return True
            return False

        return self._run(redeclare)  # type: ignore[no-any-return]

    def delete(self, queue: str, partitions: int = 0) -> None:
        """Delete ``queue``, its ``partitions`` and every wait queue they may have."""
        names = [queue, *(f"{queue}.{index}" for index in range(partitions))]
        if partitions:
            names.append(f"busway.{queue}.members")

        async def delete(channel: aio_pika.abc.AbstractChannel) -> None:
            for name in names:
                await channel.queue_delete(name)
                for power in range(32):
                    await channel.queue_delete(f"{name}.wait.{1 << power}")

        self._run(delete)


@pytest.fixture
def broker(amqp_url: str) -> Broker:
    return Broker(amqp_url)


@pytest.fixture
def queues(broker: Broker) -> Iterator[Callable[..., str]]:
    """Make queue names of this test's own (``make(partitions=N)`` for a partitioned
    channel's); the queues are deleted when it ends."""
    made: list[tuple[str, int]] = []

    def make(partitions: int = 0) -> str:
        made.append((f"busway-test-{uuid.uuid4().hex[:12]}", partitions))
        return made[-1][0]

    yield make
    for queue, partitions in made:
        broker.delete(queue, partitions)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


@dataclass
class Ping:
    number: int


@asynchronous("pings")
class Pings(EventBus):
    pass


def effects(database: Any) -> dict[int, str]:
    engine = create_engine(database)
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(amqp_worker.effects)).all()
    finally:
        engine.dispose()
    return {number: worker for number, worker in rows}
