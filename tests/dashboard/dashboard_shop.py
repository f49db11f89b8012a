"""The shop the dashboard tests look at: orders shipped by a worker through a carrier that
can be down, and invoices that always fail.

Built by ``build(url)`` in the test process; a ``busway dashboard`` process imports it as
``dashboard_shop:messaging`` with the database URL in ``DASHBOARD_SHOP_URL``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select
from sqlalchemy.orm import Session

from busway import (
    CommandBus,
    Messaging,
    RetryPolicy,
    SqlChannel,
    asynchronous,
    command_handler,
)
from busway.recovery import retry_policy


@dataclass
class Ship:
    order_id: str


@dataclass
class Invoice:
    order_id: str


class CarrierDown(Exception):
    """The carrier's API refused a shipment."""


class Carrier:
    """The service ``ship`` calls; the tests take it down and bring it back."""

    def __init__(self) -> None:
        self.down = False


@asynchronous("shipping")
class ShippingBus(CommandBus):
    """Shipments wait on the ``shipping`` channel for a worker."""


@asynchronous("billing")
class BillingBus(CommandBus):
    """Invoices wait on the ``billing`` channel for a worker."""


metadata = MetaData()
shipments = Table(
    "dashboard_shipments",
    metadata,
    Column("n", Integer, primary_key=True, autoincrement=True),
    Column("order_id", String(100), nullable=False),
)


@command_handler
def ship(command: Ship, session: Session, carrier: Carrier) -> None:
    if carrier.down:
        raise CarrierDown(f"the carrier refused order {command.order_id}: service unavailable")
    session.execute(insert(shipments).values(order_id=command.order_id))


@command_handler
@retry_policy(RetryPolicy(retries=0))
def invoice(command: Invoice) -> None:
    raise KeyError(f"no customer for order {command.order_id}")


def build(url: str) -> tuple[Messaging, Carrier]:
    carrier = Carrier()
    messaging = Messaging(
        handlers=[ship, invoice],
        channels=[SqlChannel("shipping"), SqlChannel("billing")],
        database=url,
        services=[carrier],
        retry=RetryPolicy(retries=0, instant_retries=1),
        channel_retries={"billing": RetryPolicy(retries=2, initial_delay=0.5)},
    )
    return messaging, carrier


def shipped(messaging: Messaging) -> list[str]:
    """The orders shipped, once per time one took effect."""
    with messaging.database_engine.connect() as connection:
        query = select(shipments.c.order_id).order_by(shipments.c.n)
        return [row.order_id for row in connection.execute(query)]


if "DASHBOARD_SHOP_URL" in os.environ:
    messaging, carrier = build(os.environ["DASHBOARD_SHOP_URL"])
