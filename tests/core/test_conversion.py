import datetime as dt
import enum
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgspec
import pydantic
import pytest

from busway import (
    CommandBus,
    ConversionError,
    Converter,
    EventBus,
    Headers,
    InMemoryChannel,
    Messaging,
    asynchronous,
    command_handler,
    event_handler,
    named,
)
from busway.conversion import Conversion, type_name


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass
class Line:
    product: str
    quantity: int
    price: Decimal


@dataclass
class Address:
    street: str
    city: str


@dataclass
class PlaceOrder:
    order_id: uuid.UUID
    placed_at: dt.datetime
    lines: list[Line]
    ship_to: Address | None = None
    colours: set[Colour] = field(default_factory=set)
    notes: dict[str, list[int]] = field(default_factory=dict)


class Dimensions(msgspec.Struct):
    width: float
    height: float


class ShipParcel(msgspec.Struct):
    parcel_id: str
    dimensions: list[Dimensions]
    due: dt.date
    tags: frozenset[str] = frozenset()


class Customer(pydantic.BaseModel):
    name: str
    email: str


class RegisterCustomer(pydantic.BaseModel):
    customer: Customer
    registered_at: dt.datetime
    referrers: list[Customer] = []


@asynchronous("async")
class AsyncCommandBus(CommandBus):
    pass


@asynchronous("async")
class AsyncEventBus(EventBus):
    pass


def _order() -> PlaceOrder:
    return PlaceOrder(
        order_id=uuid.UUID("01929f4a-0000-7000-8000-000000000001"),
        placed_at=dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC),
        lines=[Line("book", 2, Decimal("12.50")), Line("pen", 1, Decimal("1.05"))],
        ship_to=Address("Main St 1", "Springfield"),
        colours={Colour.RED},
        notes={"gift": [1, 2]},
    )


def _parcel() -> ShipParcel:
    return ShipParcel(
        "p-1", [Dimensions(10.5, 3), Dimensions(1, 2)], dt.date(2024, 5, 2), frozenset({"x"})
    )


def _registration() -> RegisterCustomer:
    return RegisterCustomer(
        customer=Customer(name="Ann", email="ann@example.com"),
        registered_at=dt.datetime(2024, 5, 1, tzinfo=dt.UTC),
        referrers=[Customer(name="Bob", email="bob@example.com")],
    )


# -- the conversion table -------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [_order(), _parcel(), _registration(), {"id": 1, "items": [1, 2]}],
    ids=["dataclass", "msgspec", "pydantic", "dict"],
)
def test_payloads_round_trip_through_json(payload: Any) -> None:
    conversion = Conversion()

    body, content_type = conversion.encode(payload)
    decoded = conversion.decode(body, type(payload))

    assert content_type == "application/json"
    assert isinstance(body, bytes)
    assert decoded == payload
    assert type(decoded) is type(payload)


def test_pydantic_models_use_pydantic_serialization() -> None:
    body, _ = Conversion().encode(_registration())

    assert body == _registration().model_dump_json().encode()


def test_decoding_a_body_of_the_wrong_shape_is_a_conversion_error() -> None:
    conversion = Conversion()

    with pytest.raises(ConversionError, match=r"cannot read the body as a .*Address"):
        conversion.decode(b'{"street": 1}', Address)
    with pytest.raises(ConversionError, match=r"cannot read the body as a .*Customer"):
        conversion.decode(b"{}", Customer)
    with pytest.raises(ConversionError):
        conversion.decode(b"not json", Address)


def test_types_busway_can_and_cannot_convert() -> None:
    class Plain:
        pass

    @dataclass
    class HoldsPlain:
        items: list[Plain]

    conversion = Conversion()

    assert conversion.supports(PlaceOrder)
    assert conversion.supports(ShipParcel)
    assert conversion.supports(RegisterCustomer)
    assert conversion.supports(dict)
    assert not conversion.supports(Plain)
    assert not conversion.supports(HoldsPlain)
    with pytest.raises(ConversionError, match=r"busway cannot convert .*Plain to JSON"):
        conversion.encode(Plain())


# -- through a channel ----------------------------------------------------------------------


def test_nested_types_round_trip_through_a_channel() -> None:
    received: list[Any] = []

    @command_handler
    def place(command: PlaceOrder) -> None:
        received.append(command)

    @command_handler
    def ship(command: ShipParcel) -> None:
        received.append(command)

    @command_handler
    def register(command: RegisterCustomer) -> None:
        received.append(command)

    @command_handler("raw")
    def raw(payload: dict[str, Any]) -> None:
        received.append(payload)

    messaging = Messaging(
        handlers=[place, ship, register, raw], channels=[InMemoryChannel("async")]
    )
    bus = messaging.gateway(AsyncCommandBus)
    bus.send(_order())
    bus.send(_parcel())
    bus.send(_registration())
    bus.send_with_routing("raw", {"nested": {"list": [1, 2.5, "x", None, True]}})

    assert messaging.run("async").handled == 4

    assert received == [
        _order(),
        _parcel(),
        _registration(),
        {"nested": {"list": [1, 2.5, "x", None, True]}},
    ]
    assert isinstance(received[0].lines[0].price, Decimal)
    assert isinstance(received[1].dimensions[0], Dimensions)
    assert isinstance(received[2].customer, Customer)


@dataclass
class OrderEvent:
    order_id: str


@dataclass
class OrderWasCancelled(OrderEvent):
    reason: str


def test_a_subclass_event_arrives_as_itself_through_a_channel() -> None:
    received: list[OrderEvent] = []

    @event_handler
    def on_any(event: OrderEvent) -> None:
        received.append(event)

    messaging = Messaging(handlers=[on_any], channels=[InMemoryChannel("async")])
    messaging.gateway(AsyncEventBus).publish(OrderWasCancelled("o-1", "changed mind"))
    messaging.run("async")

    assert received == [OrderWasCancelled("o-1", "changed mind")]
    assert type(received[0]) is OrderWasCancelled


# -- type names -----------------------------------------------------------------------------


@named("shop.order-was-shipped.v1")
@dataclass
class OrderWasShipped:
    order_id: str


@named("shop.parcel.v1")
class Parcel(msgspec.Struct):
    parcel_id: str


@named("shop.customer.v1")
class NamedCustomer(pydantic.BaseModel):
    name: str


@dataclass
class ExpressShipped(OrderWasShipped):
    pass


def test_type_names_default_to_module_and_qualified_name() -> None:
    assert type_name(PlaceOrder) == f"{__name__}.PlaceOrder"
    assert type_name(Dimensions) == f"{__name__}.Dimensions"


def test_named_gives_a_stable_type_name_that_subclasses_do_not_inherit() -> None:
    assert type_name(OrderWasShipped) == "shop.order-was-shipped.v1"
    assert type_name(Parcel) == "shop.parcel.v1"
    assert type_name(NamedCustomer) == "shop.customer.v1"
    assert type_name(ExpressShipped) == f"{__name__}.ExpressShipped"


def test_named_types_travel_under_their_name_and_are_routed_by_it() -> None:
    seen: list[tuple[Any, Headers]] = []

    @event_handler
    def shipped(event: OrderWasShipped, headers: Headers) -> None:
        seen.append((event, headers))

    @event_handler
    def parcel(event: Parcel, headers: Headers) -> None:
        seen.append((event, headers))

    @event_handler
    def customer(event: NamedCustomer, headers: Headers) -> None:
        seen.append((event, headers))

    channel = InMemoryChannel("async")
    messaging = Messaging(handlers=[shipped, parcel, customer], channels=[channel])
    bus = messaging.gateway(AsyncEventBus)
    bus.publish(OrderWasShipped("o-1"))
    bus.publish(Parcel("p-1"))
    bus.publish(NamedCustomer(name="Ann"))
    messaging.run("async")

    assert [(event, headers.type) for event, headers in seen] == [
        (OrderWasShipped("o-1"), "shop.order-was-shipped.v1"),
        (Parcel("p-1"), "shop.parcel.v1"),
        (NamedCustomer(name="Ann"), "shop.customer.v1"),
    ]


# -- custom converters ----------------------------------------------------------------------


class Money:
    """A value type none of the libraries knows."""

    def __init__(self, amount: Decimal, currency: str) -> None:
        self.amount = amount
        self.currency = currency

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Money) and (self.amount, self.currency) == (
            other.amount,
            other.currency,
        )

    def __hash__(self) -> int:
        return hash((self.amount, self.currency))


class MoneyConverter:
    content_type = "text/plain"

    def __init__(self) -> None:
        self.encoded = 0

    def supports(self, cls: type[Any]) -> bool:
        return cls is Money

    def encode(self, payload: Any) -> bytes:
        self.encoded += 1
        return f"{payload.amount} {payload.currency}".encode()

    def decoder(self, cls: type[Any]) -> Any:
        def decode(body: bytes) -> Money:
            amount, currency = body.decode().split()
            return Money(Decimal(amount), currency)

        return decode


def test_a_custom_converter_is_a_converter() -> None:
    assert isinstance(MoneyConverter(), Converter)


def test_a_custom_converter_carries_a_type_through_a_channel() -> None:
    received: list[tuple[Money, Headers]] = []

    @command_handler
    def charge(command: Money, headers: Headers) -> None:
        received.append((command, headers))

    converter = MoneyConverter()
    channel = InMemoryChannel("async")
    messaging = Messaging(handlers=[charge], channels=[channel], converters=[converter])
    messaging.gateway(AsyncCommandBus).send(Money(Decimal("12.50"), "EUR"))
    messaging.run("async")

    ((money, headers),) = received
    assert money == Money(Decimal("12.50"), "EUR")
    assert headers.content_type == "text/plain"
    assert converter.encoded == 1


def test_a_custom_converter_comes_before_the_built_in_ones() -> None:
    class EverythingAsText:
        content_type = "text/plain"

        def supports(self, cls: type[Any]) -> bool:
            return cls is Address

        def encode(self, payload: Any) -> bytes:
            return f"{payload.street}|{payload.city}".encode()

        def decoder(self, cls: type[Any]) -> Any:
            return lambda body: Address(*body.decode().split("|"))

    conversion = Conversion([EverythingAsText()])

    assert conversion.encode(Address("Main St", "Springfield")) == (
        b"Main St|Springfield",
        "text/plain",
    )
    assert conversion.decode(b"a|b", Address) == Address("a", "b")
