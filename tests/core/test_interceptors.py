from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from busway import (
    CommandBus,
    HandlerInfo,
    InMemoryChannel,
    Interceptor,
    Invocation,
    Messaging,
    asynchronous,
    command_handler,
    event_handler,
    query_handler,
)
from busway.handlers import Kind


@dataclass
class PlaceOrder:
    order_id: str


@dataclass
class OrderWasPlaced:
    order_id: str


@dataclass
class CountOrders:
    pass


class Recording(Interceptor):
    """Records every hook it sees, under its own name."""

    def __init__(self, name: str, log: list[str], order: int = 500) -> None:
        self.name = name
        self.log = log
        self.order = order

    def before(self, invocation: Invocation) -> None:
        self.log.append(f"before {self.name}")

    def around(self, invocation: Invocation, proceed: Callable[[], Any]) -> Any:
        self.log.append(f"enter {self.name}")
        result = proceed()
        self.log.append(f"leave {self.name}")
        return result

    async def aaround(self, invocation: Invocation, proceed: Callable[[], Awaitable[Any]]) -> Any:
        self.log.append(f"aenter {self.name}")
        result = await proceed()
        self.log.append(f"aleave {self.name}")
        return result

    def after(self, invocation: Invocation, result: Any) -> None:
        self.log.append(f"after {self.name} {result}")

    def failed(self, invocation: Invocation, error: BaseException) -> None:
        self.log.append(f"failed {self.name} {error}")


def _messaging(log: list[str], *interceptors: Interceptor, fail: bool = False) -> Messaging:
    @command_handler
    def place(command: PlaceOrder) -> str:
        log.append("handler")
        if fail:
            raise RuntimeError("boom")
        return "ok"

    @command_handler
    async def place_async(command: OrderWasPlaced) -> str:
        log.append("async handler")
        if fail:
            raise RuntimeError("boom")
        return "ok"

    return Messaging(handlers=[place, place_async], interceptors=interceptors)


def test_hooks_run_in_order_of_order_lowest_outermost() -> None:
    log: list[str] = []
    messaging = _messaging(
        log, Recording("c", log, 300), Recording("a", log, 100), Recording("b", log, 200)
    )

    assert messaging.command_bus.send(PlaceOrder("o-1")) == "ok"

    assert log == [
        "before a",
        "before b",
        "before c",
        "enter a",
        "enter b",
        "enter c",
        "handler",
        "leave c",
        "leave b",
        "leave a",
        "after a ok",
        "after b ok",
        "after c ok",
    ]


def test_equal_orders_keep_the_order_they_were_given_in() -> None:
    log: list[str] = []
    messaging = _messaging(log, Recording("first", log), Recording("second", log))

    messaging.command_bus.send(PlaceOrder("o-1"))

    assert log[:2] == ["before first", "before second"]
    assert log[2:4] == ["enter first", "enter second"]


def test_failed_hooks_see_the_error_and_it_goes_on() -> None:
    log: list[str] = []
    messaging = _messaging(log, Recording("b", log, 200), Recording("a", log, 100), fail=True)

    with pytest.raises(RuntimeError, match="boom"):
        messaging.command_bus.send(PlaceOrder("o-1"))

    assert log == [
        "before a",
        "before b",
        "enter a",
        "enter b",
        "handler",
        "failed a boom",
        "failed b boom",
    ]


async def test_aaround_wraps_handlers_on_the_asyncio_path() -> None:
    log: list[str] = []
    messaging = _messaging(log, Recording("b", log, 200), Recording("a", log, 100))

    assert await messaging.command_bus.asend(OrderWasPlaced("o-1")) == "ok"
    assert await messaging.command_bus.asend(PlaceOrder("o-1")) == "ok"

    expected = [
        "before a",
        "before b",
        "aenter a",
        "aenter b",
        "async handler",
        "aleave b",
        "aleave a",
        "after a ok",
        "after b ok",
    ]
    assert log == expected + [e.replace("async handler", "handler") for e in expected]


def test_aaround_wraps_an_async_handler_reached_from_the_sync_front_door() -> None:
    log: list[str] = []
    messaging = _messaging(log, Recording("a", log))

    assert messaging.command_bus.send(OrderWasPlaced("o-1")) == "ok"

    assert log == ["before a", "aenter a", "async handler", "aleave a", "after a ok"]


async def test_failed_hooks_on_the_asyncio_path() -> None:
    log: list[str] = []
    messaging = _messaging(log, Recording("a", log), fail=True)

    with pytest.raises(RuntimeError, match="boom"):
        await messaging.command_bus.asend(OrderWasPlaced("o-1"))

    assert log == ["before a", "aenter a", "async handler", "failed a boom"]


def test_around_may_replace_the_result_and_see_the_invocation() -> None:
    seen: list[Invocation] = []

    class Doubling(Interceptor):
        def around(self, invocation: Invocation, proceed: Callable[[], Any]) -> Any:
            seen.append(invocation)
            return proceed() * 2

    @query_handler
    def count(query: CountOrders) -> int:
        return 21

    messaging = Messaging(handlers=[count], interceptors=[Doubling()])

    assert messaging.query_bus.send(CountOrders(), headers={"tenant": "acme"}) == 42
    (invocation,) = seen
    assert invocation.message.payload == CountOrders()
    assert invocation.message.headers["tenant"] == "acme"
    assert invocation.handler.kind is Kind.QUERY
    assert invocation.handler.name == f"{__name__}.{count.__qualname__}"
    assert invocation.handler.payload_type is CountOrders
    assert invocation.delivery is None


def test_around_may_skip_the_handler() -> None:
    handled: list[str] = []

    class Blocking(Interceptor):
        def around(self, invocation: Invocation, proceed: Callable[[], Any]) -> Any:
            return "blocked"

    @command_handler
    def place(command: PlaceOrder) -> str:
        handled.append(command.order_id)
        return "placed"

    messaging = Messaging(handlers=[place], interceptors=[Blocking()])

    assert messaging.command_bus.send(PlaceOrder("o-1")) == "blocked"
    assert handled == []


def test_applies_to_chooses_the_handlers_an_interceptor_wraps() -> None:
    log: list[str] = []

    class CommandsOnly(Recording):
        def applies_to(self, handler: HandlerInfo) -> bool:
            return handler.kind is Kind.COMMAND

    class OnlyTheAsynchronous(Recording):
        def applies_to(self, handler: HandlerInfo) -> bool:
            return handler.channels == ("async",)

    @command_handler
    def place(command: PlaceOrder) -> None:
        log.append("place")

    @event_handler
    def placed(event: OrderWasPlaced) -> None:
        log.append("placed")

    @asynchronous("async")
    @event_handler
    def placed_later(event: OrderWasPlaced) -> None:
        log.append("placed later")

    messaging = Messaging(
        handlers=[place, placed, placed_later],
        channels=[InMemoryChannel("async")],
        interceptors=[CommandsOnly("commands", log), OnlyTheAsynchronous("async", log)],
    )

    messaging.command_bus.send(PlaceOrder("o-1"))
    assert log == [
        "before commands",
        "enter commands",
        "place",
        "leave commands",
        "after commands None",
    ]

    log.clear()
    messaging.event_bus.publish(OrderWasPlaced("o-1"))
    assert log == ["placed"]

    log.clear()
    messaging.run("async")
    assert log == [
        "before async",
        "enter async",
        "placed later",
        "leave async",
        "after async None",
    ]


def test_interceptors_see_the_delivery_when_a_worker_runs_the_handler() -> None:
    deliveries: list[Any] = []

    class Watching(Interceptor):
        def before(self, invocation: Invocation) -> None:
            deliveries.append(invocation.delivery)

    @asynchronous("async")
    class AsyncCommandBus(CommandBus):
        pass

    @command_handler
    def place(command: PlaceOrder) -> None:
        pass

    messaging = Messaging(
        handlers=[place], channels=[InMemoryChannel("async")], interceptors=[Watching()]
    )
    messaging.gateway(AsyncCommandBus).send(PlaceOrder("o-1"))
    messaging.run("async")

    (delivery,) = deliveries
    assert delivery.channel == "async"
    assert delivery.envelope.headers["type"] == f"{__name__}.PlaceOrder"


def test_a_failing_handler_run_by_a_worker_reaches_the_failed_hook() -> None:
    log: list[str] = []

    @asynchronous("async")
    @command_handler
    def place(command: PlaceOrder) -> None:
        raise RuntimeError("boom")

    messaging = Messaging(
        handlers=[place], channels=[InMemoryChannel("async")], interceptors=[Recording("a", log)]
    )
    messaging.command_bus.send(PlaceOrder("o-1"))
    messaging.run("async")

    assert "failed a boom" in log
