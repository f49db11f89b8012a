"""An outbox relayed to a channel that refuses some messages: the relay keeps back only those.

The far channel here stands for any channel that confirms a batch's sends before the batch
is acknowledged (RabbitMQ and NATS do; their own tests relay to the real servers).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from sqlalchemy import Column, MetaData, String, Table, create_engine, insert, select
from sqlalchemy.orm import Session

from busway import EventBus, SqlChannel, asynchronous, event_handler
from busway.channels.base import Channel, Envelope, current_batch
from busway.message import ID
from busway.testing import FakeClock
from dbsupport import create_tables, statements_sent, sync_url


@dataclass
class OrderWasPlaced:
    order_id: str


@asynchronous("outbox", "far")
class RelayedEvents(EventBus):
    """Committed to the outbox, then relayed to the far channel."""


@asynchronous("outbox")
class OutboxEvents(EventBus):
    """Committed to the outbox, then handled by a handler of this application."""


class Refused(Exception):
    pass


class FarChannel(Channel):
    """Takes a batch's sends when the batch is about to be acknowledged, and refuses those
    of the orders in ``refuse``."""

    def __init__(self, name: str = "far") -> None:
        self.name = name
        self.received: list[str] = []
        self.refuse: set[str] = set()

    def send(self, envelope: Envelope) -> None:
        batch = current_batch.get()
        if batch is None:
            self._take([(None, envelope)])
            return
        pending: list[tuple[str | None, Envelope]] = []
        pending.append((batch.current, envelope))

        def settle() -> None:
            failures = self._take(pending)
            if failures:
                raise batch.unsent(failures)

        batch.before_ack.append(settle)

    def _take(
        self, pending: list[tuple[str | None, Envelope]]
    ) -> list[tuple[str | None, BaseException]]:
        failures: list[tuple[str | None, BaseException]] = []
        for source, envelope in pending:
            order = envelope.body.decode()
            if any(refused in order for refused in self.refuse):
                failures.append((source, Refused(f"{envelope.headers[ID]} refused")))
            else:
                self.received.append(order)
        return failures

    def consume(self, handle: object, max_messages: int, wait: float) -> int:
        return 0


def orders(received: list[str]) -> list[str]:
    return [body.split('"')[3] for body in received]


metadata = MetaData()
effects = Table("test_relay_effects", metadata, Column("order_id", String(50), primary_key=True))


def effect_rows(url: str) -> list[str]:
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            return list(connection.execute(select(effects.c.order_id)).scalars())
    finally:
        engine.dispose()


@pytest.fixture
def relay(make_messaging):
    clock = FakeClock()
    far = FarChannel()
    messaging = make_messaging([], [SqlChannel("outbox"), far], clock=clock)
    return messaging, far, clock


def publish(messaging, count, bus=RelayedEvents):
    events = messaging.gateway(bus)
    with messaging.transaction():
        for number in range(count):
            events.publish(OrderWasPlaced(f"o-{number}"))


def test_a_relay_keeps_back_only_the_refused_messages(relay):
    messaging, far, clock = relay
    publish(messaging, 6)
    far.refuse = {"o-1", "o-4"}

    with pytest.raises(Refused):
        messaging.run("outbox")

    assert orders(far.received) == ["o-0", "o-2", "o-3", "o-5"]
    assert messaging.channel("outbox").depth() == 2
    assert messaging.run("outbox").handled == 0  # kept back for a second

    far.refuse = {"o-4"}
    clock.advance(1)
    with pytest.raises(Refused):
        messaging.run("outbox")
    assert orders(far.received)[4:] == ["o-1"]

    far.refuse = set()
    clock.advance(1)
    assert messaging.run("outbox").handled == 0  # refused twice: kept back for two seconds
    assert messaging.channel("outbox").oldest_age() == 2.0  # the relay is 2 s behind
    clock.advance(1)
    assert messaging.run("outbox").handled == 1

    assert orders(far.received) == ["o-0", "o-2", "o-3", "o-5", "o-1", "o-4"]  # each once
    assert messaging.channel("outbox").depth() == 0


async def test_an_asyncio_relay_keeps_back_only_the_refused_messages(relay):
    messaging, far, clock = relay
    publish(messaging, 5)
    far.refuse = {"o-3"}

    with pytest.raises(Refused):
        await messaging.arun("outbox")
    assert orders(far.received) == ["o-0", "o-1", "o-2", "o-4"]
    assert messaging.channel("outbox").depth() == 1

    far.refuse = set()
    clock.advance(1)
    assert (await messaging.arun("outbox")).handled == 1
    assert orders(far.received) == ["o-0", "o-1", "o-2", "o-4", "o-3"]


def test_a_refused_send_of_a_handler_rolls_its_whole_batch_back(make_messaging, database_url):
    """A handler's send is not a forward: the handler's writes cannot be kept apart from the
    send, so the batch rolls back and is delivered again, as any failed batch is."""
    create_tables(database_url, metadata)
    far = FarChannel()

    @event_handler
    def record(event: OrderWasPlaced, bus: RelayedEventsNow, session: Session) -> None:
        session.execute(insert(effects).values(order_id=event.order_id))
        bus.publish(event)

    messaging = make_messaging([record], [SqlChannel("outbox"), far])
    publish(messaging, 3, bus=OutboxEvents)
    far.refuse = {"o-1"}

    with pytest.raises(Refused):
        messaging.run("outbox")

    assert effect_rows(database_url) == []
    assert messaging.channel("outbox").depth() == 3


ACKNOWLEDGEMENT = re.compile(r"DELETE (M, N )?FROM BUSWAY_MESSAGES ")
"""A batch's acknowledgement, which may delete the notes of its messages in hand with them."""


@asynchronous("far")
class RelayedEventsNow(EventBus):
    """Sent straight to the far channel."""


def test_a_relay_takes_bigger_batches_while_it_only_sends_on(make_messaging):
    far = FarChannel()
    messaging = make_messaging([], [SqlChannel("outbox", batch_size=10), far])
    publish(messaging, 250)

    with statements_sent() as sent:
        assert messaging.run("outbox").handled == 250

    assert len(orders(far.received)) == 250
    batches = [statement for statement in sent if ACKNOWLEDGEMENT.search(statement)]
    assert len(batches) == 6  # 10, then 50 at a time: 10 + 4 x 50 + 40


class Subscribers:
    """Two subscribers of one event, each handled on the far side of its own relay."""

    @event_handler
    @asynchronous("outbox", "far")
    def on_the_far_side(self, event: OrderWasPlaced) -> None: ...

    @event_handler
    @asynchronous("outbox", "farther")
    def farther_still(self, event: OrderWasPlaced) -> None: ...


def test_rows_of_one_message_are_kept_back_each_on_its_own(make_messaging):
    """An event for two asynchronous subscribers is two outbox rows with one message id:
    the row whose send failed stays, the other is deleted, and nothing is sent twice."""
    far, farther = FarChannel("far"), FarChannel("farther")
    clock = FakeClock()
    messaging = make_messaging([Subscribers()], [SqlChannel("outbox"), far, farther], clock=clock)
    with messaging.transaction():
        messaging.event_bus.publish(OrderWasPlaced("o-1"))
    assert messaging.channel("outbox").depth() == 2
    far.refuse = {"o-1"}

    with pytest.raises(Refused):
        messaging.run("outbox")

    assert messaging.channel("outbox").depth() == 1
    assert orders(farther.received) == ["o-1"]
    far.refuse = set()
    clock.advance(1)
    assert messaging.run("outbox").handled == 1
    assert orders(far.received) == ["o-1"]
    assert orders(farther.received) == ["o-1"]  # not sent again
