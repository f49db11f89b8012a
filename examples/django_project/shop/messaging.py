"""The shop's messaging: an outbox event bus, and the handler a worker runs."""

from dataclasses import dataclass

from busway import EventBus, Messaging, SqlChannel, asynchronous, event_handler
from busway.django import django_database
from shop.models import Confirmation


@dataclass
class OrderWasPlaced:
    number: str


@asynchronous("outbox")
class OutboxEventBus(EventBus):
    """Events published here commit with the surrounding transaction.atomic() block."""


@event_handler
def confirm(event: OrderWasPlaced) -> None:
    # The ORM's write, the claim of the event and its acknowledgement: one transaction.
    Confirmation.objects.create(number=event.number)


messaging = Messaging(
    handlers=[confirm],
    channels=[SqlChannel("outbox")],
    database=django_database(),  # Django's connection of settings.BUSWAY["DATABASE"]
)
