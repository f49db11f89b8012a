"""The project's ``Messaging``, as ``settings.BUSWAY['MESSAGING']`` names it."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

from busway.django.database import DjangoDatabase
from busway.django.settings import BuswaySettings, configured, import_attribute
from busway.messaging import Messaging


def get_messaging() -> Messaging:
    """The ``Messaging`` that ``settings.BUSWAY['MESSAGING']`` names, checked."""
    return checked_messaging(configured())


def checked_messaging(found: BuswaySettings) -> Messaging:
    """The ``Messaging`` of ``found``, refused unless it writes through Django's connection of
    ``found.database``: otherwise its outbox would commit outside ``atomic()``."""
    messaging = import_attribute(found.messaging)
    if not isinstance(messaging, Messaging):
        raise ImproperlyConfigured(
            f"settings.BUSWAY['MESSAGING'] is {found.messaging!r}, a "
            f"{type(messaging).__name__}, not a busway Messaging; point it at the Messaging"
        )
    database = messaging.database
    if not isinstance(database, DjangoDatabase) or database.alias != found.database:
        raise ImproperlyConfigured(
            f"the Messaging of settings.BUSWAY['MESSAGING'] ({found.messaging}) has "
            f"database={database!r}, not Django's connection of {found.database!r} "
            "(settings.BUSWAY['DATABASE']), so its outbox would not commit with "
            "transaction.atomic(); build it with Messaging(database=django_database()), "
            "from busway.django"
        )
    return messaging
