import asyncio
import threading
from dataclasses import dataclass
from typing import Any

import pytest

from busway import (
    CommandBus,
    EventBus,
    Gateway,
    Headers,
    Message,
    Messaging,
    NoHandlerError,
    QueryBus,
    command_handler,
    event_handler,
    query_handler,
    route,
)


@dataclass
class PlaceOrder:
    order_id: str
    quantity: int = 1


@dataclass
class GetOrder:
    order_id: str


@dataclass
class OrderEvent:
    order_id: str


@dataclass
class OrderWasPlaced(OrderEvent):
    product: str


@dataclass
class OrderWasShipped(OrderEvent):
    carrier: str


class Repository:
    def __init__(self) -> None:
        self.orders: dict[str, int] = {}


class Clock:
    def now(self) -> str:
        return "noon"


class SystemClock(Clock):
    pass


# -- kinds of handlers ----------------------------------------------------------------------


def test_a_function_handler_runs_and_its_return_value_comes_back() -> None:
    calls: list[PlaceOrder] = []

    @command_handler
    def place(command: PlaceOrder) -> str:
        calls.append(command)
        return f"placed {command.order_id}"

    messaging = Messaging(handlers=[place])

    assert messaging.command_bus.send(PlaceOrder("o-1")) == "placed o-1"
    assert calls == [PlaceOrder("o-1")]


def test_methods_of_an_instance_are_handlers() -> None:
    class Orders:
        def __init__(self) -> None:
            self.placed: list[str] = []
            self.events: list[str] = []

        @command_handler
        def place(self, command: PlaceOrder) -> None:
            self.placed.append(command.order_id)

        @event_handler
        def on_placed(self, event: OrderWasPlaced) -> None:
            self.events.append(event.product)

        @query_handler
        def get(self, query: GetOrder) -> str:
            return f"order {query.order_id}, {len(self.placed)} placed"

        def helper(self) -> None:
            raise AssertionError("not a handler")

    orders = Orders()
    messaging = Messaging(handlers=[orders])
    messaging.command_bus.send(PlaceOrder("o-1"))
    messaging.event_bus.publish(OrderWasPlaced("o-1", "book"))

    assert orders.placed == ["o-1"]
    assert orders.events == ["book"]
    assert messaging.query_bus.send(GetOrder("o-1")) == "order o-1, 1 placed"


def test_a_bound_method_can_be_listed_on_its_own() -> None:
    class Orders:
        def __init__(self) -> None:
            self.placed: list[str] = []

        @command_handler
        def place(self, command: PlaceOrder) -> None:
            self.placed.append(command.order_id)

    orders = Orders()
    messaging = Messaging(handlers=[orders.place])
    messaging.command_bus.send(PlaceOrder("o-1"))

    assert orders.placed == ["o-1"]


def test_a_handler_class_is_built_with_services_and_gateways() -> None:
    built: list[Any] = []

    class Orders:
        def __init__(self, repository: Repository, events: EventBus, clock: Clock) -> None:
            self.repository = repository
            self.events = events
            self.clock = clock
            built.append(self)

        @command_handler
        def place(self, command: PlaceOrder) -> None:
            self.repository.orders[command.order_id] = command.quantity
            self.events.publish(OrderWasPlaced(command.order_id, self.clock.now()))

    published: list[OrderWasPlaced] = []

    @event_handler
    def on_placed(event: OrderWasPlaced) -> None:
        published.append(event)

    repository = Repository()
    messaging = Messaging(handlers=[Orders, on_placed], services=[repository, SystemClock()])
    messaging.command_bus.send(PlaceOrder("o-1", 3))

    assert len(built) == 1
    assert built[0].repository is repository
    assert isinstance(built[0].clock, SystemClock)
    assert repository.orders == {"o-1": 3}
    assert published == [OrderWasPlaced("o-1", "noon")]


def test_services_can_be_given_as_a_mapping_from_type() -> None:
    seen: list[Clock] = []
    clock = SystemClock()

    @command_handler
    def place(command: PlaceOrder, clock: Clock) -> None:
        seen.append(clock)

    messaging = Messaging(handlers=[place], services={Clock: clock})
    messaging.command_bus.send(PlaceOrder("o-1"))

    assert seen == [clock]


# -- routing --------------------------------------------------------------------------------


def test_routing_by_key_with_a_dict_payload() -> None:
    seen: list[Any] = []

    @command_handler("order.place")
    def place(payload: dict[str, Any]) -> str:
        seen.append(payload)
        return "ok"

    messaging = Messaging(handlers=[place])

    assert messaging.command_bus.send_with_routing("order.place", {"id": 1}) == "ok"
    assert seen == [{"id": 1}]


def test_routing_by_key_with_a_typed_payload_and_by_type_side_by_side() -> None:
    by_key: list[PlaceOrder] = []
    by_type: list[PlaceOrder] = []

    @command_handler("order.place.express")
    def express(command: PlaceOrder) -> None:
        by_key.append(command)

    @command_handler
    def normal(command: PlaceOrder) -> None:
        by_type.append(command)

    messaging = Messaging(handlers=[express, normal])
    messaging.command_bus.send_with_routing("order.place.express", PlaceOrder("o-1"))
    messaging.command_bus.send(PlaceOrder("o-2"))

    assert by_key == [PlaceOrder("o-1")]
    assert by_type == [PlaceOrder("o-2")]


def test_routing_by_key_for_events_and_queries() -> None:
    seen: list[str] = []

    @event_handler("order.placed")
    def first(payload: Any) -> None:
        seen.append(f"first {payload['id']}")

    @event_handler("order.placed")
    def second(payload: Any) -> None:
        seen.append(f"second {payload['id']}")

    @query_handler("order.count")
    def count(payload: Any) -> int:
        return len(seen)

    messaging = Messaging(handlers=[first, second, count])
    messaging.event_bus.publish_with_routing("order.placed", {"id": 7})

    assert seen == ["first 7", "second 7"]
    assert messaging.query_bus.send_with_routing("order.count") == 2


def test_an_event_handler_typed_with_a_base_class_receives_subclasses() -> None:
    every: list[OrderEvent] = []
    placed: list[OrderEvent] = []

    @event_handler
    def on_any(event: OrderEvent) -> None:
        every.append(event)

    @event_handler
    def on_placed(event: OrderWasPlaced) -> None:
        placed.append(event)

    messaging = Messaging(handlers=[on_any, on_placed])
    messaging.event_bus.publish(OrderWasPlaced("o-1", "book"))
    messaging.event_bus.publish(OrderWasShipped("o-1", "ups"))
    messaging.event_bus.publish(OrderEvent("o-1"))

    assert every == [
        OrderWasPlaced("o-1", "book"),
        OrderWasShipped("o-1", "ups"),
        OrderEvent("o-1"),
    ]
    assert placed == [OrderWasPlaced("o-1", "book")]


class DomainEvent:
    """A plain marker base class: not convertible itself, its subclasses are."""


@dataclass
class StockWasReserved(DomainEvent):
    sku: str


def test_a_handler_typed_with_a_plain_base_class_receives_its_subclasses() -> None:
    received: list[DomainEvent] = []

    @event_handler
    def on_any(event: DomainEvent) -> None:
        received.append(event)

    messaging = Messaging(handlers=[on_any])
    messaging.event_bus.publish(StockWasReserved("sku-1"))

    assert received == [StockWasReserved("sku-1")]


def test_every_subscriber_of_an_event_runs() -> None:
    seen: list[str] = []

    @event_handler
    def one(event: OrderWasPlaced) -> None:
        seen.append("one")

    @event_handler
    def two(event: OrderWasPlaced) -> None:
        seen.append("two")

    messaging = Messaging(handlers=[one, two])
    messaging.event_bus.publish(OrderWasPlaced("o-1", "book"))

    assert sorted(seen) == ["one", "two"]


def test_an_event_nobody_subscribes_to_is_fine() -> None:
    messaging = Messaging()

    messaging.event_bus.publish(OrderWasPlaced("o-1", "book"))


def test_a_command_without_a_handler_is_an_error_naming_it() -> None:
    messaging = Messaging()

    with pytest.raises(NoHandlerError) as command:
        messaging.command_bus.send(PlaceOrder("o-1"))
    with pytest.raises(NoHandlerError) as keyed:
        messaging.command_bus.send_with_routing("order.place", {})
    with pytest.raises(NoHandlerError) as query:
        messaging.query_bus.send(GetOrder("o-1"))

    assert str(command.value) == (
        f"no command handler takes {__name__}.PlaceOrder; add a @command_handler for it "
        "to Messaging(handlers=[...])"
    )
    assert str(keyed.value).startswith("no command handler takes routing key 'order.place';")
    assert str(query.value).startswith(f"no query handler takes {__name__}.GetOrder;")


def test_a_handler_error_reaches_the_sync_caller() -> None:
    @command_handler
    def place(command: PlaceOrder) -> None:
        raise ValueError("out of stock")

    messaging = Messaging(handlers=[place])

    with pytest.raises(ValueError, match="out of stock"):
        messaging.command_bus.send(PlaceOrder("o-1"))


# -- parameter injection --------------------------------------------------------------------


class Notifications(Gateway):
    @route("notify")
    def notify(self, payload: Any) -> None: ...


def test_parameters_are_injected_by_type() -> None:
    seen: dict[str, Any] = {}
    notified: list[Any] = []

    @event_handler("notify")
    def on_notify(payload: Any) -> None:
        notified.append(payload)

    @command_handler
    def place(
        command: PlaceOrder,
        headers: Headers,
        message: Message[PlaceOrder],
        commands: CommandBus,
        events: EventBus,
        queries: QueryBus,
        notifications: Notifications,
        repository: Repository,
        clock: Clock,
        limit: int = 10,
    ) -> None:
        seen.update(locals())
        notifications.notify({"order": command.order_id})

    repository = Repository()
    messaging = Messaging(handlers=[place, on_notify], services=[repository, SystemClock()])
    messaging.command_bus.send(PlaceOrder("o-1"), headers={"tenant": "acme"})

    assert seen["command"] == PlaceOrder("o-1")
    assert seen["headers"]["tenant"] == "acme"
    assert seen["message"].payload is seen["command"]
    assert seen["message"].headers is seen["headers"]
    assert seen["commands"] is messaging.command_bus
    assert seen["events"] is messaging.event_bus
    assert seen["queries"] is messaging.query_bus
    assert seen["notifications"] is messaging.gateway(Notifications)
    assert seen["repository"] is repository
    assert isinstance(seen["clock"], SystemClock)
    assert seen["limit"] == 10
    assert notified == [{"order": "o-1"}]


def test_keyword_only_parameters_are_injected() -> None:
    seen: list[Any] = []

    @command_handler
    def place(command: PlaceOrder, *, headers: Headers, events: EventBus) -> None:
        seen.append((headers["tenant"], events))

    messaging = Messaging(handlers=[place])
    messaging.command_bus.send(PlaceOrder("o-1"), headers={"tenant": "acme"})

    assert seen == [("acme", messaging.event_bus)]


# -- def and async def from both front doors ------------------------------------------------


def test_an_async_handler_from_the_sync_front_door() -> None:
    @command_handler
    async def place(command: PlaceOrder, headers: Headers) -> str:
        await asyncio.sleep(0)
        return f"{command.order_id} {headers['tenant']}"

    @query_handler
    async def get(query: GetOrder) -> str:
        return f"order {query.order_id}"

    messaging = Messaging(handlers=[place, get])

    assert messaging.command_bus.send(PlaceOrder("o-1"), {"tenant": "acme"}) == "o-1 acme"
    assert messaging.query_bus.send(GetOrder("o-2")) == "order o-2"


async def test_a_sync_handler_from_the_asyncio_front_door() -> None:
    thread: list[threading.Thread] = []

    @command_handler
    def place(command: PlaceOrder) -> str:
        thread.append(threading.current_thread())
        return command.order_id

    @query_handler
    def get(query: GetOrder) -> str:
        return f"order {query.order_id}"

    messaging = Messaging(handlers=[place, get])

    assert await messaging.command_bus.asend(PlaceOrder("o-1")) == "o-1"
    assert await messaging.query_bus.asend(GetOrder("o-2")) == "order o-2"
    assert thread == [threading.current_thread()]


async def test_an_async_handler_from_the_asyncio_front_door() -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    @command_handler
    async def place(command: PlaceOrder) -> str:
        loops.append(asyncio.get_running_loop())
        return command.order_id

    @event_handler
    async def on_placed(event: OrderWasPlaced) -> None:
        loops.append(asyncio.get_running_loop())

    messaging = Messaging(handlers=[place, on_placed])

    assert await messaging.command_bus.asend(PlaceOrder("o-1")) == "o-1"
    await messaging.event_bus.apublish(OrderWasPlaced("o-1", "book"))
    assert loops == [asyncio.get_running_loop()] * 2


async def test_a_sync_bus_called_inside_a_running_event_loop() -> None:
    seen: list[str] = []

    @command_handler
    async def place(command: PlaceOrder, headers: Headers) -> str:
        seen.append(str(headers["tenant"]))
        return "async"

    @command_handler
    def place_sync(command: GetOrder) -> str:
        return "sync"

    messaging = Messaging(handlers=[place, place_sync])

    assert messaging.command_bus.send(PlaceOrder("o-1"), {"tenant": "acme"}) == "async"
    assert messaging.command_bus.send(GetOrder("o-1")) == "sync"
    assert seen == ["acme"]


async def test_a_sync_handler_may_call_a_sync_bus_with_async_handlers_inside_a_loop() -> None:
    seen: list[Headers] = []
    outer: list[Headers] = []

    @command_handler
    def place(command: PlaceOrder, headers: Headers, events: EventBus) -> None:
        outer.append(headers)
        events.publish(OrderWasPlaced(command.order_id, "book"))

    @event_handler
    async def on_placed(event: OrderWasPlaced, headers: Headers) -> None:
        seen.append(headers)

    messaging = Messaging(handlers=[place, on_placed])
    await messaging.command_bus.asend(PlaceOrder("o-1"))

    assert len(seen) == 1
    assert seen[0].causation_id == outer[0].id
