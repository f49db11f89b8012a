"""The one chain: its order written down once and quoted alike, each handler's chains composed
once at start-up from the links that apply to it."""

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import busway.interceptors
from busway import InMemoryChannel, Messaging, command_handler, event_handler
from busway._internal._async import links as alinks
from busway._internal._sync import links

DOCS = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


@dataclass
class Ship:
    order_id: str


@dataclass
class Shipped:
    order_id: str


def names(classes: Any) -> list[str]:
    return [cls.__name__ for cls in classes]


def walk(link: Any) -> list[str]:
    found = []
    while link is not None:
        found.append(type(link).__name__)
        link = getattr(link, "inner", None)
    return found


def test_the_sync_chain_has_the_order_of_its_asyncio_source():
    assert names(links.LINKS) == names(alinks.LINKS)


def test_the_interceptors_docstring_quotes_the_order_of_the_code():
    quoted = re.findall(r"^    (\w+) ", busway.interceptors.__doc__ or "", re.MULTILINE)
    assert quoted == names(alinks.LINKS)


def test_the_architecture_page_quotes_the_order_of_the_code():
    section = DOCS.read_text("utf-8").split("## The chain", 1)[1].split("\n## ", 1)[0]
    assert re.findall(r"^\| `(\w+)` \|", section, re.MULTILINE) == names(alinks.LINKS)


def build(**options: Any) -> tuple[Messaging, list[str]]:
    calls: list[str] = []

    @command_handler
    def ship(command: Ship) -> None:
        calls.append(command.order_id)
        if command.order_id.startswith("bad"):
            raise RuntimeError("no truck")

    @event_handler
    async def note(event: Shipped) -> None:
        calls.append(f"noted {event.order_id}")

    messaging = Messaging(
        handlers=[ship, note],
        channels=[InMemoryChannel("failed"), InMemoryChannel("jobs")],
        **options,
    )
    return messaging, calls


def definition(messaging: Messaging, suffix: str) -> Any:
    (found,) = [d for name, d in messaging.runtime.router.by_name.items() if name.endswith(suffix)]
    return found


CONSUMING = ["DeadLettering", "DelayedRetries", "InstantRetries", "Decoding", "TimeLimit"]


def test_a_worker_runs_every_consuming_link_and_a_send_only_the_call():
    messaging, _ = build()
    for suffix in ("ship", "note"):
        chains = definition(messaging, suffix).chains
        assert walk(chains.consume) == [*CONSUMING, "Calling"]
        assert walk(chains.aconsume) == [*CONSUMING, "Calling"]
        assert walk(chains.send) == walk(chains.asend) == ["Calling"]
        assert chains.direct


def test_failed_commands_is_a_link_of_commands_only_when_configured():
    messaging, _ = build(command_failures="failed")
    ship, note = definition(messaging, "ship"), definition(messaging, "note")
    assert walk(ship.chains.send) == walk(ship.chains.asend) == ["FailedCommands", "Calling"]
    assert not ship.chains.direct
    assert walk(note.chains.send) == ["Calling"]
    assert isinstance(ship.chains.send, links.FailedCommands)
    assert isinstance(ship.chains.asend, alinks.FailedCommands)


def test_chains_are_composed_at_start_up_not_per_message(monkeypatch):
    messaging, calls = build(command_failures="failed")
    composed = {name: d.chains for name, d in messaging.runtime.router.by_name.items()}

    def refuse(*_: Any) -> Any:
        raise AssertionError("a chain was composed after start-up")

    monkeypatch.setattr(links, "compose", refuse)
    monkeypatch.setattr(alinks, "compose", refuse)
    bus = messaging.command_bus
    bus.send(Ship("o-1"))
    with pytest.raises(RuntimeError):
        bus.send(Ship("bad-1"))
    asyncio.run(messaging.command_bus.asend(Ship("o-2")))
    messaging.event_bus.publish(Shipped("o-1"))
    result = messaging.run("failed")

    assert calls == ["o-1", "bad-1", "o-2", "noted o-1", "bad-1"]
    assert (result.handled, result.failed) == (1, 1)
    assert {name: d.chains for name, d in messaging.runtime.router.by_name.items()} == composed
