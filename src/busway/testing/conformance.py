"""The scenarios every channel passes: subclass ``ChannelContract`` in a pytest module.

    from busway.testing import ChannelContract

    class TestMyChannel(ChannelContract):
        @pytest.fixture
        def channel_factory(self) -> Callable[[str], Channel]:
            return lambda name: MyChannel(name, url=...)

Each scenario builds a ``Messaging`` around a fresh channel from ``channel_factory`` and a
SQLite file as its database (for the dead letter store and the deduplication inbox); override
the ``database_url`` fixture to use another database. Delays run on the real clock and are kept
short. A channel proves itself by passing them all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from busway.channels.base import Channel, Delivery, MessageReturned
from busway.gateways import CommandBus, EventBus
from busway.handlers import asynchronous, command_handler, event_handler
from busway.message import Headers
from busway.messaging import Messaging
from busway.recovery import RetryPolicy

ChannelFactory = Callable[[str], Channel]


@dataclass
class Note:
    number: int
    text: str = ""


@dataclass
class NoteTaken:
    number: int


@asynchronous("contract")
class ContractCommands(CommandBus):
    """Sends every command through the channel under test."""


@asynchronous("contract")
class ContractEvents(EventBus):
    """Publishes every event through the channel under test."""


class Journal:
    """What the scenario handlers saw."""

    def __init__(self) -> None:
        self.notes: list[Note] = []
        self.headers: list[Headers] = []
        self.events: list[Headers] = []
        self.failures = 0
        self.fail_always = False


class ChannelContract:
    """Scenarios every channel passes; subclasses provide the ``channel_factory`` fixture."""

    @pytest.fixture
    def channel_factory(self) -> ChannelFactory:
        raise NotImplementedError("give the subclass a channel_factory fixture")

    @pytest.fixture
    def database_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'contract.db'}"

    @pytest.fixture
    def journal(self) -> Journal:
        return Journal()

    @pytest.fixture
    def messaging(
        self, channel_factory: ChannelFactory, database_url: str, journal: Journal
    ) -> Iterator[Messaging]:
        @command_handler
        def take_note(note: Note, headers: Headers, events: ContractEvents) -> None:
            if journal.fail_always:
                journal.failures += 1
                raise RuntimeError(f"note {note.number} cannot be taken")
            journal.notes.append(note)
            journal.headers.append(headers)
            events.publish(NoteTaken(note.number))

        @event_handler
        def note_taken(event: NoteTaken, headers: Headers) -> None:
            journal.events.append(headers)

        channel = channel_factory("contract")
        messaging = Messaging(
            handlers=[take_note, note_taken],
            channels=[channel],
            database=database_url,
            retry=RetryPolicy(retries=2, initial_delay=0.0, jitter=0.0),
        )
        messaging.setup()
        try:
            yield messaging
        finally:
            messaging.close()

    # -- scenarios -------------------------------------------------------------------------

    def test_send_and_receive(self, messaging: Messaging, journal: Journal) -> None:
        messaging.gateway(ContractCommands).send(Note(1, "first"))

        messaging.run("contract")

        assert journal.notes == [Note(1, "first")]

    def test_headers_and_unicode_survive_the_trip(
        self, messaging: Messaging, journal: Journal
    ) -> None:
        text = "Zürich ☃ 東京 — ø"
        messaging.gateway(ContractCommands).send(Note(2, text), {"tenant": text, "priority": 3})

        messaging.run("contract")

        assert journal.notes == [Note(2, text)]
        assert journal.headers[0]["tenant"] == text
        assert journal.headers[0]["priority"] == 3

    def test_correlation_and_causation_follow_the_flow(
        self, messaging: Messaging, journal: Journal
    ) -> None:
        messaging.gateway(ContractCommands).send(Note(3))

        messaging.run("contract")

        command = journal.headers[0]
        (event,) = journal.events
        assert event.correlation_id == command.correlation_id == command.id
        assert event.causation_id == command.id

    def test_fifo_for_one_consumer(self, messaging: Messaging, journal: Journal) -> None:
        bus = messaging.gateway(ContractCommands)
        for number in range(30):
            bus.send(Note(number))

        messaging.run("contract")

        assert [note.number for note in journal.notes] == list(range(30))

    def test_a_delayed_message_waits_its_time(self, messaging: Messaging, journal: Journal) -> None:
        sent = time.time()
        messaging.gateway(ContractCommands).send(Note(4), delay=0.6)

        messaging.run("contract")
        assert journal.notes == [], "a delayed message was delivered before its time"

        messaging.run("contract", until_empty=False, limit=2, time_limit=10)

        assert journal.notes == [Note(4)]
        assert time.time() - sent >= 0.6

    def test_a_failing_message_is_retried_then_dead_lettered(
        self, messaging: Messaging, journal: Journal
    ) -> None:
        journal.fail_always = True
        messaging.gateway(ContractCommands).send(Note(5))

        messaging.run("contract")

        assert journal.failures == 3
        (letter,) = messaging.dead_letters.list()
        assert letter.attempts == 3
        assert letter.error_message == "note 5 cannot be taken"
        journal.fail_always = False

        assert messaging.dead_letters.replay([letter.id]) == 1
        messaging.run("contract")

        assert journal.notes == [Note(5)]
        assert messaging.dead_letters.list() == []

    def test_an_unacknowledged_message_is_delivered_again(
        self, messaging: Messaging, journal: Journal
    ) -> None:
        messaging.gateway(ContractCommands).send(Note(6))
        channel = messaging.channel("contract")

        def crash(_delivery: Delivery) -> None:
            raise ConnectionAbortedError("the consumer died before acknowledging")

        with pytest.raises(ConnectionAbortedError):
            _consume_until_delivered(channel, crash)

        messaging.run("contract", until_empty=False, limit=2, time_limit=10)

        assert journal.notes == [Note(6)]

    def test_a_returned_message_is_not_lost(self, messaging: Messaging, journal: Journal) -> None:
        messaging.gateway(ContractCommands).send(Note(7))
        channel = messaging.channel("contract")

        def give_back(_delivery: Delivery) -> None:
            raise MessageReturned

        _consume_until_delivered(channel, give_back)
        messaging.run("contract", until_empty=False, limit=2, time_limit=10)

        assert journal.notes == [Note(7)]

    def test_the_same_message_delivered_twice_takes_effect_once(
        self, messaging: Messaging, journal: Journal
    ) -> None:
        channel = messaging.channel("contract")
        captured: list[Any] = []

        def capture(delivery: Delivery) -> None:
            captured.append(delivery.envelope)

        messaging.gateway(ContractCommands).send(Note(8))
        _consume_until_delivered(channel, capture)
        (envelope,) = captured
        channel.send(envelope)
        channel.send(envelope)

        messaging.run("contract")

        assert journal.notes == [Note(8)]

    async def test_the_asyncio_front_door(self, messaging: Messaging, journal: Journal) -> None:
        await messaging.gateway(ContractCommands).asend(Note(9, "async"))

        try:
            await messaging.arun("contract")
        finally:
            await messaging.aclose()

        assert journal.notes == [Note(9, "async")]
        assert len(journal.events) == 1

    def test_a_fresh_channel_works_without_setup(
        self, channel_factory: ChannelFactory, database_url: str
    ) -> None:
        taken: list[Note] = []

        @command_handler
        def take_note(note: Note) -> None:
            taken.append(note)

        messaging = Messaging(
            handlers=[take_note], channels=[channel_factory("contract")], database=database_url
        )
        try:
            messaging.gateway(ContractCommands).send(Note(10, "fresh"))
            assert messaging.run("contract").handled == 1
        finally:
            messaging.close()

        assert taken == [Note(10, "fresh")]

    async def test_a_fresh_channel_works_without_setup_in_asyncio_code(
        self, channel_factory: ChannelFactory, database_url: str
    ) -> None:
        taken: list[Note] = []

        @command_handler
        async def take_note(note: Note) -> None:
            taken.append(note)

        messaging = Messaging(
            handlers=[take_note], channels=[channel_factory("contract")], database=database_url
        )
        try:
            await messaging.gateway(ContractCommands).asend(Note(11, "fresh"))
            assert (await messaging.arun("contract")).handled == 1
        finally:
            await messaging.aclose()

        assert taken == [Note(11, "fresh")]


def _consume_until_delivered(channel: Channel, handle: Callable[[Delivery], None]) -> None:
    """Hand one message to ``handle``, waiting up to ten seconds for it to arrive."""
    called: list[Delivery] = []

    def once(delivery: Delivery) -> None:
        called.append(delivery)
        handle(delivery)

    deadline = time.monotonic() + 10
    while not called and time.monotonic() < deadline:
        channel.consume(once, 1, 1.0)
    if not called:
        raise AssertionError(f"channel {channel.name!r} delivered nothing within ten seconds")
