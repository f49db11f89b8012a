from dataclasses import dataclass
from typing import Any

import pytest

from busway import (
    CommandBus,
    ConfigurationError,
    EventBus,
    Gateway,
    InMemoryChannel,
    Messaging,
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
class GetOrder:
    order_id: str


@dataclass
class OrderWasPlaced:
    order_id: str


class Mailer:
    """A service nobody registered."""


class Unconvertible:
    def __init__(self, value: int) -> None:
        self.value = value


def _name(function: Any) -> str:
    return f"{__name__}.{function.__qualname__}"


def _problems(**configuration: Any) -> tuple[str, ...]:
    with pytest.raises(ConfigurationError) as error:
        Messaging(**configuration)
    return error.value.problems


def _problem(**configuration: Any) -> str:
    with pytest.raises(ConfigurationError) as error:
        Messaging(**configuration)
    assert len(error.value.problems) == 1, error.value.problems
    assert str(error.value) == error.value.problems[0]
    return str(error.value)


# -- unknown channels -----------------------------------------------------------------------


def test_an_unknown_channel_on_a_gateway() -> None:
    @asynchronous("asnyc")
    class AsyncCommandBus(CommandBus):
        pass

    text = _problem(
        channels=[InMemoryChannel("async"), InMemoryChannel("outbox")],
        gateways=[AsyncCommandBus],
    )

    assert text == (
        f"gateway {AsyncCommandBus.__qualname__} is marked @asynchronous('asnyc'), but no "
        "channel is named 'asnyc'; add it to Messaging(channels=[...]) (defined: async, outbox)"
    )


def test_an_unknown_channel_on_a_gateway_a_handler_asks_for() -> None:
    @asynchronous("async")
    class AsyncEventBus(EventBus):
        pass

    @command_handler
    def place(command: PlaceOrder, events: AsyncEventBus) -> None:
        pass

    text = _problem(handlers=[place])

    assert text == (
        f"gateway {AsyncEventBus.__qualname__} is marked @asynchronous('async'), but no "
        "channel is named 'async'; add it to Messaging(channels=[...])"
    )


def test_an_unknown_channel_on_a_gateway_asked_for_later() -> None:
    @asynchronous("async")
    class AsyncCommandBus(CommandBus):
        pass

    messaging = Messaging()

    with pytest.raises(ConfigurationError) as error:
        messaging.gateway(AsyncCommandBus)

    assert str(error.value) == (
        f"gateway {AsyncCommandBus.__qualname__} is marked @asynchronous('async'), but no "
        "channel is named 'async'; add it to Messaging(channels=[...])"
    )


def test_an_unknown_channel_on_a_gateway_method() -> None:
    class Orders(Gateway):
        @route("order.place")
        @asynchronous("later")
        def place(self, payload: Any) -> None: ...

    @command_handler("order.place")
    def place(payload: Any) -> None:
        pass

    text = _problem(handlers=[place], gateways=[Orders])

    assert text == (
        f"gateway method {Orders.__qualname__}.place is marked @asynchronous('later'), but "
        "no channel is named 'later'; add it to Messaging(channels=[...])"
    )


def test_an_unknown_channel_on_a_handler() -> None:
    @asynchronous("async", "relay")
    @command_handler
    def place(command: PlaceOrder) -> None:
        pass

    text = _problem(handlers=[place], channels=[InMemoryChannel("async")])

    assert text == (
        f"handler {_name(place)} is marked @asynchronous('relay'), but no channel is named "
        "'relay'; add it to Messaging(channels=[...])"
    )


def test_two_channels_with_one_name() -> None:
    text = _problem(channels=[InMemoryChannel("async"), InMemoryChannel("async")])

    assert text == "two channels are named 'async'; give each channel its own name"


# -- handlers -------------------------------------------------------------------------------


def test_two_handlers_for_one_command() -> None:
    @command_handler
    def first(command: PlaceOrder) -> None:
        pass

    @command_handler
    def second(command: PlaceOrder) -> None:
        pass

    text = _problem(handlers=[first, second])

    assert text == (
        f"command {__name__}.PlaceOrder has two handlers, {_name(first)} and "
        f"{_name(second)}; a command has exactly one handler, so remove or re-route one of them"
    )


def test_two_handlers_for_one_query() -> None:
    @query_handler
    def first(query: GetOrder) -> None:
        pass

    class Orders:
        @query_handler
        def get(self, query: GetOrder) -> None:
            pass

    text = _problem(handlers=[first, Orders()])

    assert text == (
        f"query {__name__}.GetOrder has two handlers, {_name(first)} and "
        f"{__name__}.{Orders.get.__qualname__}; a query has exactly one handler, so remove "
        "or re-route one of them"
    )


def test_two_handlers_for_one_routing_key() -> None:
    @command_handler("order.place")
    def first(payload: Any) -> None:
        pass

    @command_handler("order.place")
    def second(payload: Any) -> None:
        pass

    text = _problem(handlers=[first, second])

    assert text.startswith(
        f"command routing key 'order.place' has two handlers, {_name(first)} and {_name(second)};"
    )


def test_one_routing_key_for_two_kinds() -> None:
    @command_handler("order")
    def command(payload: Any) -> None:
        pass

    @event_handler("order")
    def event(payload: Any) -> None:
        pass

    text = _problem(handlers=[command, event])

    assert text == (
        f"routing key 'order' is taken by both a command handler and event handler "
        f"{_name(event)}; give them different keys"
    )


def test_two_subscribers_of_one_event_are_fine() -> None:
    @event_handler
    def first(event: OrderWasPlaced) -> None:
        pass

    @event_handler
    def second(event: OrderWasPlaced) -> None:
        pass

    Messaging(handlers=[first, second])


def test_a_handler_parameter_busway_cannot_inject() -> None:
    @command_handler
    def place(command: PlaceOrder, mailer: Mailer) -> None:
        pass

    text = _problem(handlers=[place])

    assert text == (
        f"handler {_name(place)} asks for 'mailer' (Mailer), which busway cannot inject; "
        "pass one in Messaging(services=[...]), give the parameter a default, or ask for "
        "Headers, Message, a gateway class or a Session"
    )


def test_a_handler_parameter_without_a_type_hint() -> None:
    @command_handler
    def place(command: PlaceOrder, mailer) -> None:  # type: ignore[no-untyped-def]
        pass

    text = _problem(handlers=[place])

    assert text.startswith(f"handler {_name(place)} asks for 'mailer' (no type hint), ")


def test_a_handler_class_busway_cannot_build() -> None:
    class Orders:
        def __init__(self, mailer: Mailer) -> None:
            self.mailer = mailer

        @command_handler
        def place(self, command: PlaceOrder) -> None:
            pass

    text = _problem(handlers=[Orders])

    assert text == (
        f"handler class {Orders.__qualname__} needs 'mailer' (Mailer) to be built; pass one in "
        "Messaging(services=[...]) or pass an instance in handlers=[...]"
    )


def test_a_payload_type_busway_cannot_convert() -> None:
    @command_handler
    def place(command: Unconvertible) -> None:
        pass

    text = _problem(handlers=[place])

    assert text == (
        f"handler {_name(place)} takes {__name__}.Unconvertible, which busway cannot convert "
        "to JSON; make it a dataclass, a msgspec Struct or a pydantic model, or pass a "
        "Converter in Messaging(converters=[...])"
    )


def test_a_payload_type_with_an_unconvertible_field() -> None:
    @dataclass
    class Basket:
        items: list[Unconvertible]

    @event_handler
    def filled(event: Basket) -> None:
        pass

    text = _problem(handlers=[filled])

    assert text.startswith(
        f"handler {_name(filled)} takes {__name__}.{Basket.__qualname__}, which busway cannot "
        "convert to JSON;"
    )


def test_a_handler_without_a_payload_type_hint() -> None:
    @command_handler
    def place(command) -> None:  # type: ignore[no-untyped-def]
        pass

    text = _problem(handlers=[place])

    assert text == (
        f"handler {_name(place)} has no class type hint on its first parameter 'command'; "
        "annotate it with the message class, or route it by key: "
        '@command_handler("some.key")'
    )


def test_a_handler_without_parameters() -> None:
    @event_handler
    def tick() -> None:
        pass

    text = _problem(handlers=[tick])

    assert text == (
        f"handler {_name(tick)} takes no parameters; its first parameter receives the message"
    )


def test_a_function_without_a_marker() -> None:
    def place(command: PlaceOrder) -> None:
        pass

    text = _problem(handlers=[place])

    assert text == (
        f"{place.__qualname__} is in handlers=[...] but has no @command_handler, "
        "@event_handler or @query_handler marker; add one"
    )


def test_an_object_without_marked_methods() -> None:
    class Orders:
        def place(self, command: PlaceOrder) -> None:
            pass

    text = _problem(handlers=[Orders()])

    assert text == (
        f"{Orders.__qualname__} is in handlers=[...] but none of its methods has a "
        "@command_handler, @event_handler or @query_handler marker"
    )


# -- gateways -------------------------------------------------------------------------------


def test_a_gateway_method_without_a_route() -> None:
    class Orders(Gateway):
        @route("order.place")
        def place(self, payload: Any) -> None: ...

        def cancel(self, payload: Any) -> None: ...

    @command_handler("order.place")
    def place(payload: Any) -> None:
        pass

    text = _problem(handlers=[place], gateways=[Orders])

    assert text == (
        f"gateway method {Orders.__qualname__}.cancel has no route; mark it "
        '@route("some.key"), or rename it with a leading underscore if it is a helper'
    )


def test_a_route_no_handler_takes() -> None:
    class Orders(Gateway):
        @route("order.plaec")
        def place(self, payload: Any) -> None: ...

    @command_handler("order.place")
    def place(payload: Any) -> None:
        pass

    text = _problem(handlers=[place], gateways=[Orders])

    assert text == (
        f"gateway method {Orders.__qualname__}.place routes to 'order.plaec', which no "
        "handler takes; add a handler for 'order.plaec', or say "
        "@route('order.plaec', kind=\"command\") if another application handles it"
    )


def test_a_gateway_with_problems_asked_for_by_a_handler_is_reported_at_start_up() -> None:
    class Orders(Gateway):
        def place(self, payload: Any) -> None: ...

    @command_handler
    def checkout(command: PlaceOrder, orders: Orders) -> None:
        pass

    text = _problem(handlers=[checkout])

    assert text.startswith(f"gateway method {Orders.__qualname__}.place has no route;")


def test_a_gateway_with_problems_asked_for_later() -> None:
    class Orders(Gateway):
        def place(self, payload: Any) -> None: ...

    messaging = Messaging()

    with pytest.raises(ConfigurationError, match=r"Orders\.place has no route"):
        messaging.gateway(Orders)


def test_a_query_route_through_a_channel() -> None:
    @asynchronous("async")
    class Orders(Gateway):
        @route("order.get")
        def get(self, payload: Any) -> Any: ...

    @query_handler("order.get")
    def get(payload: Any) -> None:
        pass

    text = _problem(handlers=[get], gateways=[Orders], channels=[InMemoryChannel("async")])

    assert text == (
        f"gateway method {Orders.__qualname__}.get sends query 'order.get' through a channel, "
        "but a query's caller waits for its answer; remove @asynchronous from it"
    )


# -- all at once ----------------------------------------------------------------------------


def test_every_problem_is_reported_together() -> None:
    @asynchronous("nowhere")
    class AsyncCommandBus(CommandBus):
        pass

    class Orders(Gateway):
        def cancel(self, payload: Any) -> None: ...

        @route("order.unknown")
        def unknown(self, payload: Any) -> None: ...

    @command_handler
    def first(command: PlaceOrder, mailer: Mailer) -> None:
        pass

    @command_handler
    def second(command: PlaceOrder) -> None:
        pass

    @query_handler
    def get(query: Unconvertible) -> None:
        pass

    @asynchronous("later")
    @event_handler
    def placed(event: OrderWasPlaced) -> None:
        pass

    with pytest.raises(ConfigurationError) as error:
        Messaging(
            handlers=[first, second, get, placed],
            channels=[InMemoryChannel("async")],
            gateways=[AsyncCommandBus, Orders],
        )

    problems = error.value.problems
    assert len(problems) == 7
    expected_starts = [
        f"handler {_name(first)} asks for 'mailer' (Mailer), which busway cannot inject",
        f"handler {_name(get)} takes {__name__}.Unconvertible, which busway cannot convert",
        f"command {__name__}.PlaceOrder has two handlers, {_name(first)} and {_name(second)}",
        f"handler {_name(placed)} is marked @asynchronous('later'), but no channel",
        f"gateway {AsyncCommandBus.__qualname__} is marked @asynchronous('nowhere')",
        f"gateway method {Orders.__qualname__}.cancel has no route",
        f"gateway method {Orders.__qualname__}.unknown routes to 'order.unknown'",
    ]
    for start in expected_starts:
        assert sum(problem.startswith(start) for problem in problems) == 1, start
    text = str(error.value)
    assert text.startswith("7 problems in the messaging configuration:\n  - ")
    assert text.splitlines()[1:] == [f"  - {problem}" for problem in problems]


def test_configuration_error_from_one_or_many_problems() -> None:
    one = ConfigurationError("the only problem")
    many = ConfigurationError(["first", "second"])

    assert str(one) == "the only problem"
    assert one.problems == ("the only problem",)
    assert str(many) == ("2 problems in the messaging configuration:\n  - first\n  - second")
