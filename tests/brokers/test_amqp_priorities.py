"""Priorities on RabbitMQ: a priority queue hands the higher priorities of a backlog out first,
equal ones in the order sent."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from amqp_support import Broker
from amqp_support import broker as broker  # fixtures: pytest finds them by name
from amqp_support import queues as queues
from amqp_support import rabbitmq_in_use as rabbitmq_in_use

from busway import EventBus, Messaging, asynchronous, event_handler, priority
from busway.amqp import AmqpChannel
from busway.channels.base import Envelope
from busway.errors import ConfigurationError
from busway.message import PRIORITY


@dataclass
class Job:
    number: int
    level: int


@asynchronous("jobs")
class Jobs(EventBus):
    pass


@priority(7)
@asynchronous("jobs")
class UrgentJobs(EventBus):
    pass


def _messaging(amqp_url: str, queue: str, seen: list[Job], **options: bool) -> Messaging:
    @event_handler
    def job(event: Job) -> None:
        seen.append(event)

    channel = AmqpChannel("jobs", amqp_url, queue=queue, prefetch=10, **options)
    messaging = Messaging(handlers=[job], channels=[channel])
    messaging.setup()
    return messaging


def test_a_backlog_comes_out_higher_priorities_first_equal_ones_in_order(
    amqp_url: str, queues: Callable[..., str]
) -> None:
    seen: list[Job] = []
    messaging = _messaging(amqp_url, queues(), seen, priorities=True)
    try:
        jobs = messaging.gateway(Jobs)
        levels = [(number * 7) % 10 for number in range(60)]  # 0 to 9, mixed
        for number, level in enumerate(levels):
            jobs.publish(Job(number, level), priority=level)

        assert messaging.run("jobs").handled == 60
    finally:
        messaging.close()

    expected = sorted(range(60), key=lambda number: (-levels[number], number))
    assert [job.number for job in seen] == expected


def test_a_bus_class_priority_applies_and_a_send_priority_wins(
    amqp_url: str, queues: Callable[..., str]
) -> None:
    seen: list[Job] = []
    messaging = _messaging(amqp_url, queues(), seen, priorities=True)
    try:
        messaging.gateway(Jobs).publish(Job(1, 0))
        messaging.gateway(UrgentJobs).publish(Job(2, 7))
        messaging.gateway(UrgentJobs).publish(Job(3, 9), priority=9)
        messaging.gateway(UrgentJobs).publish(Job(4, 0), priority=0)
        messaging.run("jobs")
    finally:
        messaging.close()

    assert [job.number for job in seen] == [3, 2, 1, 4]


def test_each_message_carries_its_priority_as_the_amqp_property(
    amqp_url: str, queues: Callable[..., str], broker: Broker
) -> None:
    channel = AmqpChannel("jobs", amqp_url, queue=queues(), priorities=True)
    channel.setup()
    try:
        channel.send(Envelope(b"5", {"id": str(uuid.uuid4()), PRIORITY: 5}))
        channel.send(Envelope(b"99", {"id": str(uuid.uuid4()), PRIORITY: 99}))  # out of bounds
        channel.send(Envelope(b"none", {"id": str(uuid.uuid4())}))
    finally:
        channel.close()

    got = [broker.get(channel.queue) for _ in range(3)]
    assert [(message.body, message.priority) for message in got if message] == [
        (b"99", 9),
        (b"5", 5),
        (b"none", 0),  # RabbitMQ keeps a message without one at 0
    ]


def test_without_priorities_the_queue_stays_first_in_first_out(
    amqp_url: str, queues: Callable[..., str], broker: Broker
) -> None:
    seen: list[Job] = []
    queue = queues()
    messaging = _messaging(amqp_url, queue, seen)
    try:
        jobs = messaging.gateway(Jobs)
        for number in range(10):
            jobs.publish(Job(number, (number + 2) % 3), priority=(number + 2) % 3)
        message = broker.get(queue)  # the first one, of priority 2: published without it
        assert message is not None and message.priority == 0
        messaging.run("jobs")
    finally:
        messaging.close()

    assert [job.number for job in seen] == list(range(1, 10))


def test_a_queue_declared_without_priorities_is_reported_in_one_sentence(
    amqp_url: str, queues: Callable[..., str]
) -> None:
    queue = queues()
    AmqpChannel("jobs", amqp_url, queue=queue).setup()
    channel = AmqpChannel("jobs", amqp_url, queue=queue, priorities=True)
    try:
        with pytest.raises(ConfigurationError) as raised:
            channel.setup()
    finally:
        channel.close()
    (problem,) = raised.value.problems
    assert problem.startswith(
        f"channel 'jobs': RabbitMQ has a queue '{queue}' declared with other arguments than "
        "{'x-max-priority': 9}"
    )
    assert problem.endswith(
        "RabbitMQ does not change a queue's arguments, so delete the queue (after draining "
        "it) or give the channel a new queue= name"
    )


def test_queue_arguments_may_not_set_the_priorities(amqp_url: str) -> None:
    channel = AmqpChannel("jobs", amqp_url, queue_arguments={"x-max-priority": 3})
    with pytest.raises(ConfigurationError) as raised:
        Messaging(channels=[channel])
    assert raised.value.problems == (
        "AmqpChannel 'jobs' has 'x-max-priority' in queue_arguments; use priorities=True, "
        "which also gives each message its priority",
    )
