"""Messages no busway wrote, published straight to the queue of a channel on the real
RabbitMQ (odd headers, a wrong content type, bodies that are not JSON): each is one dead
letter, the good messages around it are handled, the consumer goes on."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import uuid
from collections.abc import Awaitable, Callable, Iterator
from decimal import Decimal
from typing import Any

import aiormq
import pytest
from aiormq import spec
from amqp_support import rabbitmq_in_use as rabbitmq_in_use  # a fixture
from unreadable_support import JOB_TYPE, Job, JobBus, build, check, run

from busway.amqp import AmqpChannel

COMMAND = {"type": JOB_TYPE, "busway.kind": "command"}
# (headers, content type, body): none of them can be handled
GARBAGE: list[tuple[dict[str, Any] | None, str | None, bytes]] = [
    (None, None, b"no headers at all"),
    ({"foo": "bar"}, "text/plain", b"plain text"),
    ({**COMMAND}, "text/plain", b"not json"),
    ({**COMMAND}, "application/json", b'{"id": '),
    ({**COMMAND}, "application/x-nonsense", b"\xff\xfe"),
    ({"type": ["x", 1], "busway.kind": {"nested": {"a": [1, 2]}}}, None, b"{}"),
    ({"type": bytearray(b"\xff\xfe"), "busway.kind": Decimal("1.5")}, None, b"{}"),
    ({**COMMAND, "busway.slip": 12, "when": datetime.datetime(2020, 1, 1)}, None, b"{}"),
    ({**COMMAND, "busway.handler": True}, None, b'{"id": "x"}'),
    ({**COMMAND, "busway.route": ["a"]}, None, b'{"id": "x"}'),
]


def on_rabbitmq(url: str, work: Callable[[aiormq.abc.AbstractChannel], Awaitable[Any]]) -> None:
    """Do ``work`` as another program would, with aiormq alone, on a connection of its own."""

    async def main() -> None:
        connection = await aiormq.connect(url)
        try:
            await work(await connection.channel())
        finally:
            await connection.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # the caller's loop may run
        pool.submit(asyncio.run, main()).result()


def publish(url: str, queue: str, headers: Any, content_type: Any, body: bytes) -> None:
    properties = spec.Basic.Properties(headers=headers, content_type=content_type)
    on_rabbitmq(
        url, lambda channel: channel.basic_publish(body, routing_key=queue, properties=properties)
    )


@pytest.fixture
def queue(amqp_url: str) -> Iterator[str]:
    name = f"busway-test-{uuid.uuid4().hex[:12]}"
    yield name
    on_rabbitmq(amqp_url, lambda channel: channel.queue_delete(name))


@pytest.mark.parametrize("front", ["sync", "asyncio"])
def test_garbage_messages_are_dead_letters_and_the_good_ones_are_handled(
    amqp_url: str, queue: str, front: str
) -> None:
    messaging, jobs = build(AmqpChannel("jobs", amqp_url, queue=queue))
    bus = messaging.gateway(JobBus)
    good = []
    for number, (headers, content_type, body) in enumerate(GARBAGE):
        bus.send(Job(f"good-{number}"))
        publish(amqp_url, queue, headers, content_type, body)
        good.append(f"good-{number}")
    bus.send(Job("last"))
    good.append("last")
    try:
        result = run(messaging, front)

        check(messaging, jobs, good, [], len(GARBAGE), result)
    finally:
        messaging.close()
