"""In-process dispatch: what a bus adds over calling the handler yourself."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

import msgspec

from bench import Result
from bench.timing import Loop, compare
from busway import (
    CommandBus,
    EventBus,
    InMemoryChannel,
    Messaging,
    asynchronous,
    command_handler,
    event_handler,
)

MICROSECONDS = "µs/msg"


@dataclass
class Ping:
    count: int


@asynchronous("async")
class AsyncCommandBus(CommandBus):
    pass


@command_handler
@event_handler
def handle(command: Ping) -> None:
    command.count += 1


@command_handler
async def ahandle(command: Ping) -> None:
    command.count += 1


def benchmarks() -> list[Result]:
    return [send(), publish(), asend(), in_memory_channel()]


def send() -> Result:
    messaging = Messaging(handlers=[handle])
    bus = messaging.command_bus
    ping = Ping(0)

    def through_bus(n: int) -> None:
        for _ in range(n):
            bus.send(ping)

    def direct(n: int) -> None:
        for _ in range(n):
            handle(ping)

    return _result("CommandBus.send, one sync handler", through_bus, "direct call", direct)


def publish() -> Result:
    messaging = Messaging(handlers=[handle])
    bus = messaging.gateway(EventBus)
    ping = Ping(0)

    def through_bus(n: int) -> None:
        for _ in range(n):
            bus.publish(ping)

    def direct(n: int) -> None:
        for _ in range(n):
            handle(ping)

    return _result("EventBus.publish, one subscriber", through_bus, "direct call", direct)


def asend() -> Result:
    messaging = Messaging(handlers=[ahandle])
    bus = messaging.command_bus
    ping = Ping(0)
    loop = asyncio.new_event_loop()

    async def sending(n: int) -> None:
        for _ in range(n):
            await bus.asend(ping)

    async def awaiting(n: int) -> None:
        for _ in range(n):
            await ahandle(ping)

    try:
        return _result(
            "await CommandBus.asend, one async handler",
            lambda n: loop.run_until_complete(sending(n)),
            "await direct call",
            lambda n: loop.run_until_complete(awaiting(n)),
        )
    finally:
        loop.close()


def in_memory_channel() -> Result:
    """Queue through an ``@asynchronous`` bus, then drain with a worker."""
    messaging = Messaging(handlers=[handle], channels=[InMemoryChannel("async")])
    bus = messaging.gateway(AsyncCommandBus)
    ping = Ping(0)

    def through_channel(n: int) -> None:
        for _ in range(n):
            bus.send(ping)
        messaging.worker("async").run()

    encode = msgspec.json.Encoder().encode
    decode = msgspec.json.Decoder(Ping).decode

    def by_hand(n: int) -> None:
        queue: deque[bytes] = deque()
        for _ in range(n):
            queue.append(encode(ping))
        while queue:
            handle(decode(queue.popleft()))

    return _result(
        "InMemoryChannel: send, then worker drains",
        through_channel,
        "deque + msgspec JSON + call",
        by_hand,
    )


def _result(name: str, subject: Loop, baseline: str, reference: Loop) -> Result:
    value, baseline_value = compare(subject, reference)
    return Result(f"core: {name}", value * 1e6, MICROSECONDS, baseline, baseline_value * 1e6)
