from dataclasses import dataclass
from typing import Any

import pytest

from busway import (
    CommandBus,
    EventBus,
    Gateway,
    Headers,
    InMemoryChannel,
    Messaging,
    QueryBus,
    asynchronous,
    command_handler,
    event_handler,
    query_handler,
    route,
)


@dataclass
class PlaceOrder:
    order_id: str


@dataclass
class CountOrders:
    pass


@dataclass
class OrderWasPlaced:
    order_id: str


class Shop:
    """Handlers that keep what they saw."""

    def __init__(self) -> None:
        self.placed: list[str] = []
        self.events: list[str] = []
        self.headers: list[Headers] = []

    @command_handler
    def place(self, command: PlaceOrder, headers: Headers) -> str:
        self.placed.append(command.order_id)
        self.headers.append(headers)
        return f"placed {command.order_id}"

    @query_handler
    def count(self, query: CountOrders) -> int:
        return len(self.placed)

    @event_handler
    def on_placed(self, event: OrderWasPlaced) -> None:
        self.events.append(event.order_id)

    @command_handler("order.place")
    def place_by_key(self, payload: dict[str, Any], headers: Headers) -> str:
        self.placed.append(payload["id"])
        self.headers.append(headers)
        return f"placed {payload['id']} by key"

    @query_handler("order.count")
    def count_by_key(self, payload: Any) -> int:
        return len(self.placed)

    @event_handler("order.placed")
    def on_placed_by_key(self, payload: dict[str, Any]) -> None:
        self.events.append(payload["id"])


# -- built-in buses -------------------------------------------------------------------------


def test_built_in_buses_send_publish_and_query() -> None:
    shop = Shop()
    messaging = Messaging(handlers=[shop])

    assert messaging.command_bus.send(PlaceOrder("o-1"), {"tenant": "acme"}) == "placed o-1"
    messaging.event_bus.publish(OrderWasPlaced("o-1"))
    assert messaging.query_bus.send(CountOrders()) == 1
    assert messaging.command_bus.send_with_routing("order.place", {"id": "o-2"}) == (
        "placed o-2 by key"
    )
    messaging.event_bus.publish_with_routing("order.placed", {"id": "o-2"})
    assert messaging.query_bus.send_with_routing("order.count") == 2

    assert shop.placed == ["o-1", "o-2"]
    assert shop.events == ["o-1", "o-2"]
    assert shop.headers[0]["tenant"] == "acme"


async def test_built_in_buses_asyncio_twins() -> None:
    shop = Shop()
    messaging = Messaging(handlers=[shop])

    assert await messaging.command_bus.asend(PlaceOrder("o-1"), {"tenant": "acme"}) == (
        "placed o-1"
    )
    await messaging.event_bus.apublish(OrderWasPlaced("o-1"))
    assert await messaging.query_bus.asend(CountOrders()) == 1
    assert await messaging.command_bus.asend_with_routing("order.place", {"id": "o-2"}) == (
        "placed o-2 by key"
    )
    await messaging.event_bus.apublish_with_routing("order.placed", {"id": "o-2"})
    assert await messaging.query_bus.asend_with_routing("order.count") == 2

    assert shop.placed == ["o-1", "o-2"]
    assert shop.events == ["o-1", "o-2"]
    assert shop.headers[0]["tenant"] == "acme"


def test_the_same_bus_object_is_returned_each_time() -> None:
    messaging = Messaging()

    assert messaging.command_bus is messaging.command_bus
    assert messaging.gateway(CommandBus) is messaging.command_bus
    assert messaging.gateway(EventBus) is messaging.event_bus
    assert messaging.gateway(QueryBus) is messaging.query_bus


def test_gateway_rejects_a_class_that_is_not_a_gateway() -> None:
    messaging = Messaging()

    with pytest.raises(TypeError, match="is not a Gateway subclass"):
        messaging.gateway(Shop)  # type: ignore[type-var]


# -- subclasses -----------------------------------------------------------------------------


class AuditedCommandBus(CommandBus):
    """A plain subclass: a bus of its own, still synchronous."""


@asynchronous("async")
class AsyncCommandBus(CommandBus):
    pass


@asynchronous("async")
class AsyncEventBus(EventBus):
    pass


def test_a_plain_subclass_of_a_bus_is_a_bus_of_its_own() -> None:
    shop = Shop()
    messaging = Messaging(handlers=[shop])

    bus = messaging.gateway(AuditedCommandBus)

    assert isinstance(bus, AuditedCommandBus)
    assert bus is not messaging.command_bus
    assert bus.send(PlaceOrder("o-1")) == "placed o-1"


def test_an_asynchronous_subclass_queues_while_the_plain_bus_handles_now() -> None:
    shop = Shop()
    channel = InMemoryChannel("async")
    messaging = Messaging(handlers=[shop], channels=[channel])

    assert messaging.gateway(AsyncCommandBus).send(PlaceOrder("o-1")) is None
    messaging.gateway(AsyncEventBus).publish(OrderWasPlaced("o-1"))
    assert messaging.gateway(AsyncCommandBus).send_with_routing("order.place", {"id": "o-2"}) is (
        None
    )

    assert shop.placed == []
    assert shop.events == []
    assert channel.depth() == 3

    messaging.run("async")

    assert shop.placed == ["o-1", "o-2"]
    assert shop.events == ["o-1"]
    assert channel.depth() == 0


async def test_an_asynchronous_subclass_queues_from_asyncio() -> None:
    shop = Shop()
    channel = InMemoryChannel("async")
    messaging = Messaging(handlers=[shop], channels=[channel])

    assert await messaging.gateway(AsyncCommandBus).asend(PlaceOrder("o-1")) is None
    await messaging.gateway(AsyncEventBus).apublish(OrderWasPlaced("o-1"))
    assert channel.depth() == 2
    assert shop.placed == []

    result = await messaging.arun("async")

    assert result.handled == 2
    assert shop.placed == ["o-1"]
    assert shop.events == ["o-1"]


# -- business interfaces --------------------------------------------------------------------


class Orders(Gateway):
    @route("order.place")
    def place(self, payload: dict[str, Any], headers: Any = None) -> str: ...

    @route("order.count")
    def count(self) -> int: ...

    @route("order.placed")
    def placed(self, payload: dict[str, Any]) -> None: ...

    @route("order.place")
    async def aplace(self, payload: dict[str, Any]) -> str: ...

    def _helper(self) -> None:
        pass


def test_a_business_interface_asked_for_by_messaging_gateway() -> None:
    shop = Shop()
    messaging = Messaging(handlers=[shop])

    orders = messaging.gateway(Orders)

    assert isinstance(orders, Orders)
    assert orders is messaging.gateway(Orders)
    assert orders.place({"id": "o-1"}, headers={"tenant": "acme"}) == "placed o-1 by key"
    orders.placed({"id": "o-1"})
    assert orders.count() == 1
    assert shop.events == ["o-1"]
    assert shop.headers[0]["tenant"] == "acme"


async def test_a_business_interface_with_async_methods() -> None:
    shop = Shop()
    messaging = Messaging(handlers=[shop])

    orders = messaging.gateway(Orders)

    assert await orders.aplace({"id": "o-1"}) == "placed o-1 by key"
    assert orders.count() == 1


def test_a_business_interface_asked_for_by_a_handler_parameter() -> None:
    seen: list[Any] = []

    class Checkout:
        @route("order.place")
        def place(self, payload: dict[str, Any]) -> str: ...

    class CheckoutGateway(Checkout, Gateway):
        pass

    @command_handler("checkout")
    def checkout(payload: Any, orders: CheckoutGateway) -> None:
        seen.append(orders.place({"id": payload}))

    shop = Shop()
    messaging = Messaging(handlers=[shop, checkout])
    messaging.command_bus.send_with_routing("checkout", "o-9")

    assert seen == ["placed o-9 by key"]
    assert shop.placed == ["o-9"]


def test_a_business_interface_marked_asynchronous_queues_every_method() -> None:
    @asynchronous("async")
    class AsyncOrders(Gateway):
        @route("order.place")
        def place(self, payload: dict[str, Any]) -> None: ...

        @route("order.placed")
        def placed(self, payload: dict[str, Any]) -> None: ...

    shop = Shop()
    channel = InMemoryChannel("async")
    messaging = Messaging(handlers=[shop], channels=[channel])

    orders = messaging.gateway(AsyncOrders)
    orders.place({"id": "o-1"})
    orders.placed({"id": "o-1"})

    assert channel.depth() == 2
    assert shop.placed == []
    messaging.run("async")
    assert shop.placed == ["o-1"]
    assert shop.events == ["o-1"]


def test_a_route_with_an_explicit_kind_for_a_handler_elsewhere() -> None:
    @asynchronous("outbox")
    class Billing(Gateway):
        @route("invoice.create", kind="command")
        def create_invoice(self, payload: dict[str, Any]) -> None: ...

    channel = InMemoryChannel("outbox")
    messaging = Messaging(channels=[channel], gateways=[Billing])

    messaging.gateway(Billing).create_invoice({"order": "o-1"})

    assert channel.depth() == 1
