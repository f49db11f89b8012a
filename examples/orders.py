"""The orders demo: an asynchronous command bus and an outbox, on an embedded SQLite file.

Run it with ``make demo`` (a fresh database each time), or with ``ORDERS_DATABASE`` naming a
database URL (default ``sqlite:///orders.db``); ``busway run async --app orders:messaging``
from this folder runs a worker for it.

It places three orders through ``AsyncCommandBus`` (queued, handled by a worker); each
handler writes the order and publishes ``OrderWasPlaced`` through ``OutboxEventBus`` in the
same transaction. One order is for a product out of stock: its handler fails after
publishing, so its order row and its event roll back together.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from sqlalchemy import String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from busway import (
    CommandBus,
    EventBus,
    Messaging,
    RetryPolicy,
    SqlChannel,
    asynchronous,
    command_handler,
    event_handler,
)


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    order_id: Mapped[str] = mapped_column(String(50), primary_key=True)
    product: Mapped[str] = mapped_column(String(100))


@dataclass
class PlaceOrder:
    order_id: str
    product: str


@dataclass
class OrderWasPlaced:
    order_id: str
    product: str


@asynchronous("async")
class AsyncCommandBus(CommandBus):
    """Every command sent through this bus is handled later, by a worker."""


@asynchronous("outbox")
class OutboxEventBus(EventBus):
    """Events published here commit with the surrounding transaction."""


class OutOfStock(Exception):
    pass


STOCK = {"book", "pen"}


@command_handler
def place_order(command: PlaceOrder, events: OutboxEventBus, session: Session) -> None:
    session.add(Order(order_id=command.order_id, product=command.product))
    events.publish(OrderWasPlaced(command.order_id, command.product))
    if command.product not in STOCK:
        say(f"  place_order {command.order_id}: {command.product!r} is out of stock -> raise")
        raise OutOfStock(f"no {command.product} left")
    say(f"  place_order {command.order_id}: order row written, OrderWasPlaced published")


@event_handler
def send_confirmation(event: OrderWasPlaced) -> None:
    say(f"  send_confirmation: mailing the confirmation of {event.order_id} ({event.product})")


def say(text: str) -> None:
    print(text, flush=True)


messaging = Messaging(
    handlers=[place_order, send_confirmation],
    channels=[SqlChannel("async"), SqlChannel("outbox")],
    database=os.environ.get("ORDERS_DATABASE", "sqlite:///orders.db"),
    retry=RetryPolicy(retries=1, initial_delay=0.0),
)


def main() -> None:
    engine = messaging.database_engine  # busway's own tables are created at their first use
    Base.metadata.create_all(engine)

    say(f"busway demo on {engine.url}\n")
    say("1. Three orders go through AsyncCommandBus: queued on channel 'async', nothing runs yet.")
    bus = messaging.gateway(AsyncCommandBus)
    for order_id, product in [("o-1", "book"), ("o-2", "unicorn"), ("o-3", "pen")]:
        bus.send(PlaceOrder(order_id, product))
    say(f"   channel 'async' holds {messaging.channel('async').depth()} messages\n")

    say("2. A worker consumes 'async'. Each handler runs in a transaction with its outbox event:")
    result = messaging.run("async")
    say(f"   handled {result.handled}, failed {result.failed}\n")

    with Session(engine) as session:
        orders = session.scalars(select(Order.order_id).order_by(Order.order_id)).all()
    say(f"3. Orders in the database: {', '.join(orders)}  (o-2 rolled back)")
    say(
        f"   channel 'outbox' holds {messaging.channel('outbox').depth()} events: "
        "o-2's event rolled back with its order\n"
    )

    say("4. A worker consumes 'outbox':")
    messaging.run("outbox")

    say("\n5. The failed command was retried once, then kept as a dead letter:")
    for letter in messaging.dead_letters.list():
        say(
            f"   {letter.handler} failed {letter.attempts} times: "
            f"{letter.error_type.rsplit('.', 1)[-1]}: {letter.error_message}"
        )
    say("   (`busway dead-letter replay ID` sends it back once the stock is in)")
    messaging.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.CRITICAL)
    main()
