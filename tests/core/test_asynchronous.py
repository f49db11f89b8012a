from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest

from busway import (
    CommandBus,
    ConfigurationError,
    ConversionError,
    EventBus,
    Gateway,
    Headers,
    InMemoryChannel,
    Messaging,
    QueryBus,
    RetryPolicy,
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
class OrderWasPlaced:
    order_id: str


@dataclass
class GetOrder:
    order_id: str


@asynchronous("async")
class AsyncCommandBus(CommandBus):
    pass


@asynchronous("async")
class AsyncEventBus(EventBus):
    pass


@asynchronous("a", "b")
class PipelineCommandBus(CommandBus):
    pass


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


def test_the_same_handler_sync_through_command_bus_and_async_through_a_marked_subclass() -> None:
    recorder = Recorder()

    @command_handler
    def place(command: PlaceOrder) -> str:
        recorder.calls.append(("place", command))
        return "done"

    channel = InMemoryChannel("async")
    messaging = Messaging(handlers=[place], channels=[channel])

    assert messaging.command_bus.send(PlaceOrder("sync")) == "done"
    assert recorder.calls == [("place", PlaceOrder("sync"))]

    assert messaging.gateway(AsyncCommandBus).send(PlaceOrder("async")) is None
    assert recorder.calls == [("place", PlaceOrder("sync"))]
    assert channel.depth() == 1

    result = messaging.run("async")

    assert (result.handled, result.failed, result.reason) == (1, 0, "empty")
    assert recorder.calls == [("place", PlaceOrder("sync")), ("place", PlaceOrder("async"))]
    assert channel.depth() == 0


def test_the_worker_hands_the_handler_a_decoded_copy() -> None:
    received: list[PlaceOrder] = []

    @command_handler
    def place(command: PlaceOrder) -> None:
        received.append(command)

    messaging = Messaging(handlers=[place], channels=[InMemoryChannel("async")])
    sent = PlaceOrder("o-1")
    messaging.gateway(AsyncCommandBus).send(sent)
    messaging.run("async")

    assert received == [sent]
    assert received[0] is not sent


def test_asynchronous_on_a_handler_runs_it_from_the_channel() -> None:
    recorder = Recorder()

    @asynchronous("async")
    @command_handler
    def place(command: PlaceOrder) -> None:
        recorder.calls.append(("place", command))

    @event_handler
    def now(event: OrderWasPlaced) -> None:
        recorder.calls.append(("now", event))

    @event_handler
    @asynchronous("async")
    def later(event: OrderWasPlaced) -> None:
        recorder.calls.append(("later", event))

    channel = InMemoryChannel("async")
    messaging = Messaging(handlers=[place, now, later], channels=[channel])

    messaging.command_bus.send(PlaceOrder("o-1"))
    messaging.event_bus.publish(OrderWasPlaced("o-1"))

    assert recorder.names() == ["now"]
    assert channel.depth() == 2

    messaging.run("async")

    assert recorder.names() == ["now", "place", "later"]


def test_asynchronous_on_one_gateway_method() -> None:
    recorder = Recorder()

    class Orders(Gateway):
        @route("order.place")
        @asynchronous("async")
        def place(self, payload: dict[str, Any]) -> None: ...

        @route("order.place")
        def place_now(self, payload: dict[str, Any]) -> str: ...

    @command_handler("order.place")
    def place(payload: dict[str, Any]) -> str:
        recorder.calls.append(("place", payload))
        return "placed"

    channel = InMemoryChannel("async")
    messaging = Messaging(handlers=[place], channels=[channel])
    orders = messaging.gateway(Orders)

    assert orders.place_now({"id": 1}) == "placed"
    assert orders.place({"id": 2}) is None
    assert recorder.calls == [("place", {"id": 1})]
    assert channel.depth() == 1

    messaging.run("async")

    assert recorder.calls == [("place", {"id": 1}), ("place", {"id": 2})]


def test_a_pipeline_of_two_channels_on_a_gateway() -> None:
    recorder = Recorder()

    @command_handler
    def place(command: PlaceOrder, headers: Headers) -> None:
        recorder.calls.append(("place", headers))

    a, b = InMemoryChannel("a"), InMemoryChannel("b")
    messaging = Messaging(handlers=[place], channels=[a, b])

    messaging.gateway(PipelineCommandBus).send(PlaceOrder("o-1"), headers={"tenant": "acme"})
    assert (a.depth(), b.depth()) == (1, 0)

    assert messaging.run("a").handled == 1
    assert recorder.calls == []
    assert (a.depth(), b.depth()) == (0, 1)

    assert messaging.run("b").handled == 1
    assert (a.depth(), b.depth()) == (0, 0)
    ((name, headers),) = recorder.calls
    assert name == "place"
    assert headers["tenant"] == "acme"
    assert headers.causation_id is None


def test_a_pipeline_of_two_channels_on_a_handler() -> None:
    recorder = Recorder()

    @asynchronous("a", "b")
    @event_handler
    def relayed(event: OrderWasPlaced) -> None:
        recorder.calls.append(("relayed", event))

    a, b = InMemoryChannel("a"), InMemoryChannel("b")
    messaging = Messaging(handlers=[relayed], channels=[a, b])

    messaging.event_bus.publish(OrderWasPlaced("o-1"))
    assert (a.depth(), b.depth()) == (1, 0)
    messaging.run("a")
    assert recorder.calls == []
    assert (a.depth(), b.depth()) == (0, 1)
    messaging.run("b")
    assert recorder.calls == [("relayed", OrderWasPlaced("o-1"))]


def test_handler_markers_still_apply_after_an_asynchronous_gateway() -> None:
    recorder = Recorder()

    @event_handler
    def now(event: OrderWasPlaced) -> None:
        recorder.calls.append(("now", event))

    @asynchronous("slow")
    @event_handler
    def slow(event: OrderWasPlaced) -> None:
        recorder.calls.append(("slow", event))

    @asynchronous("async")
    @event_handler
    def same_channel(event: OrderWasPlaced) -> None:
        recorder.calls.append(("same", event))

    fast, slow_channel = InMemoryChannel("async"), InMemoryChannel("slow")
    messaging = Messaging(handlers=[now, slow, same_channel], channels=[fast, slow_channel])

    messaging.gateway(AsyncEventBus).publish(OrderWasPlaced("o-1"))
    assert recorder.calls == []

    messaging.run("async")

    assert sorted(recorder.names()) == ["now", "same"]
    assert (fast.depth(), slow_channel.depth()) == (0, 1)

    messaging.run("slow")

    assert sorted(recorder.names()) == ["now", "same", "slow"]
    assert (fast.depth(), slow_channel.depth()) == (0, 0)


# -- per-subscriber isolation ---------------------------------------------------------------


@dataclass
class Subscribers:
    calls: dict[str, int] = field(default_factory=lambda: {"steady": 0, "flaky": 0})
    failures_left: int = 100

    def handlers(self) -> list[Any]:
        @event_handler
        def steady(event: OrderWasPlaced) -> None:
            self.calls["steady"] += 1

        @event_handler
        def flaky(event: OrderWasPlaced) -> None:
            self.calls["flaky"] += 1
            if self.failures_left > 0:
                self.failures_left -= 1
                raise RuntimeError("flaky is down")

        return [steady, flaky]


def test_one_failing_subscriber_is_retried_alone(clock: Any) -> None:
    subscribers = Subscribers(failures_left=2)
    messaging = Messaging(
        handlers=subscribers.handlers(),
        channels=[InMemoryChannel("async")],
        retry=RetryPolicy(retries=3, initial_delay=5, jitter=0),
        clock=clock,
    )

    messaging.gateway(AsyncEventBus).publish(OrderWasPlaced("o-1"))
    first = messaging.run("async")
    assert (first.handled, first.failed) == (1, 1)
    assert subscribers.calls == {"steady": 1, "flaky": 1}

    clock.advance(5)
    messaging.run("async")
    clock.advance(10)
    messaging.run("async")

    assert subscribers.calls == {"steady": 1, "flaky": 3}
    assert messaging.dead_letters.list() == []


def test_one_subscriber_out_of_retries_is_dead_lettered_alone(clock: Any) -> None:
    subscribers = Subscribers()
    messaging = Messaging(
        handlers=subscribers.handlers(),
        channels=[InMemoryChannel("async")],
        retry=RetryPolicy(retries=2, initial_delay=1, jitter=0),
        clock=clock,
    )

    messaging.gateway(AsyncEventBus).publish(OrderWasPlaced("o-1"))
    for _ in range(5):
        messaging.run("async")
        clock.advance(100)

    assert subscribers.calls == {"steady": 1, "flaky": 3}
    (letter,) = messaging.dead_letters.list()
    assert letter.handler is not None
    assert letter.handler.endswith(".flaky")
    assert letter.attempts == 3
    assert letter.error_message == "flaky is down"


async def test_one_failing_subscriber_is_retried_alone_with_arun(clock: Any) -> None:
    subscribers = Subscribers(failures_left=1)
    messaging = Messaging(
        handlers=subscribers.handlers(),
        channels=[InMemoryChannel("async")],
        retry=RetryPolicy(retries=3, initial_delay=5, jitter=0),
        clock=clock,
    )

    await messaging.gateway(AsyncEventBus).apublish(OrderWasPlaced("o-1"))
    await messaging.arun("async")
    clock.advance(5)
    await messaging.arun("async")

    assert subscribers.calls == {"steady": 1, "flaky": 2}


# -- queries cannot be asynchronous ---------------------------------------------------------


def test_asynchronous_on_a_query_bus_is_a_configuration_error() -> None:
    @asynchronous("async")
    class AsyncQueryBus(QueryBus):
        pass

    messaging = Messaging(channels=[InMemoryChannel("async")])

    with pytest.raises(ConfigurationError) as error:
        messaging.gateway(AsyncQueryBus)

    assert str(error.value) == (
        f"query bus {AsyncQueryBus.__qualname__} is marked @asynchronous, but a query's "
        "caller waits for its answer; remove the marker, or send a command and publish the "
        "result as an event"
    )


def test_asynchronous_on_a_query_bus_is_reported_at_start_up() -> None:
    @asynchronous("async")
    class AsyncQueryBus(QueryBus):
        pass

    with pytest.raises(ConfigurationError, match="is marked @asynchronous, but a query's"):
        Messaging(channels=[InMemoryChannel("async")], gateways=[AsyncQueryBus])


def test_asynchronous_on_a_query_handler_is_a_configuration_error() -> None:
    @asynchronous("async")
    @query_handler
    def get(query: GetOrder) -> str:
        return "order"

    with pytest.raises(ConfigurationError) as error:
        Messaging(handlers=[get], channels=[InMemoryChannel("async")])

    assert str(error.value) == (
        f"query handler {__name__}.{get.__qualname__} is marked @asynchronous, but a query's "
        "caller waits for its answer; remove the marker, or make it a command handler"
    )


def test_asynchronous_needs_a_channel_name() -> None:
    with pytest.raises(TypeError, match="needs at least one channel name"):
        asynchronous()


# -- delays ---------------------------------------------------------------------------------


def test_a_delayed_message_waits_for_the_clock(clock: Any) -> None:
    handled: list[str] = []

    @command_handler
    def place(command: PlaceOrder) -> None:
        handled.append(command.order_id)

    channel = InMemoryChannel("async")
    messaging = Messaging(handlers=[place], channels=[channel], clock=clock)
    bus = messaging.gateway(AsyncCommandBus)

    bus.send(PlaceOrder("late"), delay=30)
    bus.send(PlaceOrder("later"), delay=timedelta(minutes=1))
    bus.send(PlaceOrder("now"))

    assert messaging.run("async").handled == 1
    assert handled == ["now"]
    assert channel.depth() == 2

    clock.advance(29.5)
    assert messaging.run("async").handled == 0
    clock.advance(0.5)
    assert messaging.run("async").handled == 1
    assert handled == ["now", "late"]

    clock.advance(30)
    messaging.run("async")
    assert handled == ["now", "late", "later"]
    assert channel.depth() == 0


async def test_a_delayed_message_from_asyncio(clock: Any) -> None:
    handled: list[str] = []

    @command_handler
    async def place(command: PlaceOrder) -> None:
        handled.append(command.order_id)

    messaging = Messaging(handlers=[place], channels=[InMemoryChannel("async")], clock=clock)

    await messaging.gateway(AsyncCommandBus).asend(PlaceOrder("late"), delay=10)
    await messaging.arun("async")
    assert handled == []
    clock.advance(10)
    await messaging.arun("async")
    assert handled == ["late"]


class DomainEvent:
    """A plain marker base class: not convertible itself, its subclasses are."""


@dataclass
class StockWasReserved(DomainEvent):
    sku: str


def test_a_handler_typed_with_a_plain_base_class_receives_subclasses_from_a_channel() -> None:
    received: list[DomainEvent] = []

    @event_handler
    def on_any(event: DomainEvent) -> None:
        received.append(event)

    channel = InMemoryChannel("async")
    messaging = Messaging(handlers=[on_any], channels=[channel])
    messaging.gateway(AsyncEventBus).publish(StockWasReserved("sku-1"))
    messaging.run("async")

    assert received == [StockWasReserved("sku-1")]
    with pytest.raises(ConversionError, match="cannot convert"):
        messaging.gateway(AsyncEventBus).publish(DomainEvent())
    assert channel.depth() == 0


# -- the in-memory channel serializes -------------------------------------------------------


class Plain:
    def __init__(self, value: int) -> None:
        self.value = value


@dataclass
class Basket:
    items: set[Any]


def test_an_unserializable_payload_fails_at_send() -> None:
    @command_handler("order.place")
    def place(payload: Any) -> None:
        raise AssertionError("never reached")

    @command_handler
    def fill(basket: Basket) -> None:
        raise AssertionError("never reached")

    channel = InMemoryChannel("async")
    messaging = Messaging(handlers=[place, fill], channels=[channel])
    bus = messaging.gateway(AsyncCommandBus)

    with pytest.raises(ConversionError, match="cannot convert"):
        bus.send_with_routing("order.place", Plain(1))
    with pytest.raises(ConversionError, match="cannot serialize"):
        bus.send(Basket({Plain(1), Plain(2)}))

    assert channel.depth() == 0


async def test_an_unserializable_payload_fails_at_asend() -> None:
    @command_handler("order.place")
    def place(payload: Any) -> None:
        raise AssertionError("never reached")

    channel = InMemoryChannel("async")
    messaging = Messaging(handlers=[place], channels=[channel])

    with pytest.raises(ConversionError):
        await messaging.gateway(AsyncCommandBus).asend_with_routing("order.place", Plain(1))
    assert channel.depth() == 0


def test_an_unserializable_header_fails_at_send() -> None:
    @command_handler
    def place(command: PlaceOrder) -> None:
        raise AssertionError("never reached")

    channel = InMemoryChannel("async")
    messaging = Messaging(handlers=[place], channels=[channel])

    with pytest.raises(ConversionError, match="header values must be"):
        messaging.gateway(AsyncCommandBus).send(
            PlaceOrder("o-1"),
            headers={"when": Plain(1)},  # type: ignore[dict-item]
        )
    assert channel.depth() == 0
