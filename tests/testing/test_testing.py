from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest

from busway import (
    CommandBus,
    EventBus,
    InMemoryChannel,
    Messaging,
    RetryPolicy,
    asynchronous,
    command_handler,
    event_handler,
)
from busway.testing import (
    FakeClock,
    NotIdleError,
    arun_until_idle,
    record,
    run_until_idle,
)


@dataclass
class PlaceOrder:
    order_id: str


@dataclass
class OrderWasPlaced:
    order_id: str


@dataclass
class Ping:
    count: int


@asynchronous("async")
class AsyncCommandBus(CommandBus):
    pass


@asynchronous("events")
class AsyncEventBus(EventBus):
    pass


class Shop:
    def __init__(self) -> None:
        self.placed: list[str] = []
        self.confirmed: list[str] = []

    @command_handler
    def place(self, command: PlaceOrder, events: AsyncEventBus) -> None:
        self.placed.append(command.order_id)
        events.publish(OrderWasPlaced(command.order_id))

    @event_handler
    def confirm(self, event: OrderWasPlaced) -> None:
        self.confirmed.append(event.order_id)


def shop_messaging(clock: FakeClock | None = None) -> tuple[Shop, Messaging]:
    shop = Shop()
    messaging = Messaging(
        handlers=[shop],
        channels=[InMemoryChannel("async"), InMemoryChannel("events")],
        clock=clock or FakeClock(),
    )
    return shop, messaging


def test_record_keeps_payloads_per_bus() -> None:
    _, messaging = shop_messaging()
    with record(messaging) as recorded:
        messaging.command_bus.send(PlaceOrder("o-1"))
        messaging.gateway(AsyncCommandBus).send(PlaceOrder("o-2"))

    assert recorded.sent(CommandBus) == [PlaceOrder("o-1")]
    assert recorded.sent(AsyncCommandBus) == [PlaceOrder("o-2")]
    assert recorded.sent(AsyncEventBus) == [OrderWasPlaced("o-1")]
    assert recorded.sent() == [PlaceOrder("o-1"), OrderWasPlaced("o-1"), PlaceOrder("o-2")]


def test_record_keeps_whole_messages_with_their_headers() -> None:
    _, messaging = shop_messaging()
    with record(messaging) as recorded:
        messaging.command_bus.send(PlaceOrder("o-1"), {"tenant": "acme"})

    command, event = recorded.messages()
    assert event.headers.causation_id == command.headers.id
    assert event.headers.correlation_id == command.headers.correlation_id
    assert event.headers["tenant"] == "acme"
    assert recorded.messages(AsyncEventBus) == [event]


def test_record_keeps_what_went_on_each_channel() -> None:
    _, messaging = shop_messaging()
    with record(messaging) as recorded:
        messaging.gateway(AsyncCommandBus).send(PlaceOrder("o-1"))
        assert recorded.on_channel("async") == [PlaceOrder("o-1")]
        assert recorded.on_channel("events") == []
        run_until_idle(messaging)

    assert recorded.on_channel("events") == [OrderWasPlaced("o-1")]
    (envelope,) = recorded.envelopes("events")
    assert envelope.headers["type"] == recorded.messages(AsyncEventBus)[0].headers.type


def test_recording_stops_when_the_block_ends() -> None:
    _, messaging = shop_messaging()
    with record(messaging) as recorded:
        messaging.command_bus.send(PlaceOrder("o-1"))
    messaging.command_bus.send(PlaceOrder("o-2"))

    assert recorded.sent(CommandBus) == [PlaceOrder("o-1")]
    assert messaging.runtime.observers == []


def test_clear_forgets_what_was_recorded() -> None:
    _, messaging = shop_messaging()
    with record(messaging) as recorded:
        messaging.command_bus.send(PlaceOrder("o-1"))
        recorded.clear()
        messaging.command_bus.send(PlaceOrder("o-2"))

    assert recorded.sent(CommandBus) == [PlaceOrder("o-2")]
    assert recorded.on_channel("events") == [OrderWasPlaced("o-2")]


def test_run_until_idle_follows_one_channel_feeding_another() -> None:
    shop, messaging = shop_messaging()
    bus = messaging.gateway(AsyncCommandBus)
    bus.send(PlaceOrder("o-1"))
    bus.send(PlaceOrder("o-2"))

    result = run_until_idle(messaging)

    assert shop.placed == ["o-1", "o-2"]
    assert shop.confirmed == ["o-1", "o-2"]
    assert (result.handled, result.failed) == (4, 0)
    assert all(channel.depth() == 0 for channel in messaging.channels.values())


def test_run_until_idle_can_be_limited_to_some_channels() -> None:
    shop, messaging = shop_messaging()
    messaging.gateway(AsyncCommandBus).send(PlaceOrder("o-1"))

    run_until_idle(messaging, ["async"])

    assert shop.placed == ["o-1"]
    assert shop.confirmed == []
    assert messaging.channel("events").depth() == 1


def test_delayed_messages_wait_for_the_fake_clock() -> None:
    clock = FakeClock()
    shop, messaging = shop_messaging(clock)
    messaging.gateway(AsyncCommandBus).send(PlaceOrder("o-1"), delay=timedelta(minutes=5))

    assert run_until_idle(messaging).handled == 0
    clock.advance(299)
    assert run_until_idle(messaging).handled == 0
    clock.advance(1)
    run_until_idle(messaging)

    assert shop.confirmed == ["o-1"]


def test_retries_happen_when_the_clock_reaches_their_delay() -> None:
    clock = FakeClock()
    attempts: list[int] = []

    @command_handler
    @asynchronous("async")
    def flaky(command: Ping) -> None:
        attempts.append(command.count)
        if len(attempts) < 3:
            raise RuntimeError("not yet")

    messaging = Messaging(
        handlers=[flaky],
        channels=[InMemoryChannel("async")],
        retry=RetryPolicy(retries=5, initial_delay=10, multiplier=1, jitter=0),
        clock=clock,
    )
    messaging.command_bus.send(Ping(1))

    assert run_until_idle(messaging).failed == 1
    assert len(attempts) == 1
    clock.advance(10)
    assert run_until_idle(messaging).failed == 1
    clock.advance(10)
    assert run_until_idle(messaging).failed == 0
    assert attempts == [1, 1, 1]
    assert messaging.dead_letters.list() == []


def test_run_until_idle_gives_up_on_a_handler_feeding_itself() -> None:
    @command_handler
    @asynchronous("async")
    def again(command: Ping, bus: CommandBus) -> None:
        bus.send(Ping(command.count + 1))

    messaging = Messaging(handlers=[again], channels=[InMemoryChannel("async")])
    messaging.command_bus.send(Ping(0))

    with pytest.raises(NotIdleError, match="after 50 deliveries"):
        run_until_idle(messaging, limit=50)


def test_run_until_idle_is_not_fooled_by_exactly_limit_messages() -> None:
    shop, messaging = shop_messaging()
    messaging.gateway(AsyncCommandBus).send(PlaceOrder("o-1"))

    assert run_until_idle(messaging, limit=2).handled == 2
    assert shop.confirmed == ["o-1"]


def test_run_until_idle_without_channels_does_nothing() -> None:
    messaging = Messaging()

    assert run_until_idle(messaging).handled == 0


async def test_arun_until_idle_runs_async_handlers_on_the_loop() -> None:
    handled: list[int] = []

    @command_handler
    @asynchronous("async")
    async def ping(command: Ping) -> None:
        handled.append(command.count)

    messaging = Messaging(handlers=[ping], channels=[InMemoryChannel("async")])
    with record(messaging) as recorded:
        await messaging.command_bus.asend(Ping(1))
        await messaging.command_bus.asend(Ping(2))
        result = await arun_until_idle(messaging)

    assert handled == [1, 2]
    assert result.handled == 2
    assert recorded.on_channel("async") == [Ping(1), Ping(2)]


def test_fake_clock_moves_only_forward() -> None:
    clock = FakeClock(100.0)
    clock.advance(1.5)
    clock.advance(timedelta(seconds=2))

    assert clock() == 103.5
    with pytest.raises(ValueError, match="forward"):
        clock.advance(-1)


def test_message_timestamps_come_from_the_fake_clock() -> None:
    clock = FakeClock(1_000.0)
    _, messaging = shop_messaging(clock)
    with record(messaging) as recorded:
        clock.advance(5)
        messaging.command_bus.send(PlaceOrder("o-1"))

    assert [m.headers.timestamp for m in recorded.messages()] == [1_005.0, 1_005.0]
