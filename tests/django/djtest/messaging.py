"""One Messaging per database alias of the tests (``default``, ``postgresql``, ``mariadb``),
each on Django's connection of that alias; ``default`` is settings.BUSWAY's."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from django.db import transaction
from django.db.models import F

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
from busway.django import django_database
from djtest.models import Counter, Delivered, Effect
from markers import write_atomically

TABLE = "busway_dj_messages"
committed: list[str] = []
"""The numbers of the OrderPlaced events whose handling committed (``on_commit``)."""
in_block: list[bool] = []
"""Whether each OrderPlaced handler ran inside an ``atomic()`` block."""


@dataclass
class OrderPlaced:
    number: str


@dataclass
class Record:
    key: int


@asynchronous("outbox")
class OutboxBus(EventBus):
    """Events published here commit with the surrounding atomic() block."""


@asynchronous("work")
class WorkBus(CommandBus):
    """Commands sent here wait on the ``work`` channel for a worker."""


class Handlers:
    """Write through the ORM on ``alias``. The worker named in ``DJTEST_WORKER`` blocks at
    its ``DJTEST_BLOCK_AT``-th command, its rows written and not committed, until killed; any
    worker dies at once on the command ``DJTEST_EXIT_ON``."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.calls = 0

    @event_handler
    def deliver(self, event: OrderPlaced) -> None:
        Delivered.objects.using(self.alias).create(number=event.number)
        in_block.append(transaction.get_connection(self.alias).in_atomic_block)
        transaction.on_commit(lambda: committed.append(event.number), using=self.alias)

    @command_handler
    def record(self, command: Record) -> None:
        worker = os.environ.get("DJTEST_WORKER", "test")
        Effect.objects.using(self.alias).create(key=command.key, worker=worker)
        Counter.objects.using(self.alias).filter(worker=worker).update(n=F("n") + 1)
        self.calls += 1
        if str(command.key) == os.environ.get("DJTEST_EXIT_ON"):
            os._exit(1)  # the worker dies with its batch in hand, as a segfault would end it
        if str(self.calls) == os.environ.get("DJTEST_BLOCK_AT"):
            write_atomically(Path(os.environ["DJTEST_MARKER"]), str(command.key))
            while True:
                time.sleep(60)


@cache
def messaging_for(alias: str) -> Messaging:
    batch_size = int(os.environ.get("DJTEST_BATCH", "100"))
    return Messaging(
        handlers=[Handlers(alias)],
        channels=[
            SqlChannel("outbox", table=TABLE),
            SqlChannel("work", table=TABLE, batch_size=batch_size),
        ],
        database=django_database(alias),
        gateways=[OutboxBus, WorkBus],
        retry=RetryPolicy(retries=0),  # a failure is dead-lettered at once
    )


def __getattr__(name: str) -> Any:
    """``djtest.messaging:default``, ``:postgresql``, ``:mariadb`` (for settings.BUSWAY)."""
    if name.startswith("_"):
        raise AttributeError(name)
    from django.conf import settings

    if name not in settings.DATABASES:
        raise AttributeError(name)
    return messaging_for(name)
