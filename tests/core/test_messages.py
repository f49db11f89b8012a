import asyncio
import dataclasses
import itertools
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import pytest

from busway import (
    CommandBus,
    EventBus,
    Headers,
    InMemoryChannel,
    Message,
    Messaging,
    asynchronous,
    command_handler,
    event_handler,
)
from busway.message import uuid7


@dataclass
class PlaceOrder:
    order_id: str


@dataclass
class ReserveStock:
    order_id: str


@dataclass
class StockReserved:
    order_id: str


@asynchronous("async")
class AsyncCommandBus(CommandBus):
    pass


@asynchronous("async")
class AsyncEventBus(EventBus):
    pass


# -- Headers and Message values ------------------------------------------------------------


def test_headers_are_a_read_only_mapping() -> None:
    headers = Headers({"id": "1", "tenant": "acme"})

    assert isinstance(headers, Mapping)
    assert headers["tenant"] == "acme"
    assert dict(headers) == {"id": "1", "tenant": "acme"}
    with pytest.raises(TypeError):
        headers["tenant"] = "other"  # type: ignore[index]
    with pytest.raises(TypeError):
        del headers["tenant"]  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        headers.other = 1  # type: ignore[attr-defined]
    assert headers["tenant"] == "acme"


def test_headers_do_not_share_the_dict_they_were_built_from() -> None:
    source = {"tenant": "acme"}
    headers = Headers(source)
    source["tenant"] = "other"
    headers.as_dict()["tenant"] = "changed"

    assert headers["tenant"] == "acme"


def test_headers_replace_returns_a_copy_and_none_removes_a_key() -> None:
    headers = Headers({"tenant": "acme", "user": "ann"})

    changed = headers.replace(tenant="globex", user=None)

    assert changed == {"tenant": "globex"}
    assert headers == {"tenant": "acme", "user": "ann"}


def test_headers_as_dict_applies_changes_to_a_copy() -> None:
    headers = Headers({"tenant": "acme", "user": "ann"})

    data = headers.as_dict({"tenant": "globex", "user": None, "step": "one"})
    data["step"] = "two"

    assert data == {"tenant": "globex", "step": "two"}
    assert headers == {"tenant": "acme", "user": "ann"}


def test_user_headers_leave_out_well_known_and_internal_keys() -> None:
    headers = Headers(
        {"id": "1", "correlation_id": "1", "busway.kind": "command", "tenant": "acme"}
    )

    assert headers.user_headers() == {"tenant": "acme"}


def test_headers_are_hashable_and_compare_by_content() -> None:
    assert Headers({"a": 1, "b": 2}) == Headers({"b": 2, "a": 1})
    assert hash(Headers({"a": 1, "b": 2})) == hash(Headers({"b": 2, "a": 1}))
    assert Headers({"a": 1}) != Headers({"a": 2})


def test_message_is_immutable() -> None:
    message = Message(PlaceOrder("o-1"), Headers({"id": "x"}))

    with pytest.raises(dataclasses.FrozenInstanceError):
        message.payload = PlaceOrder("o-2")  # type: ignore[misc]
    assert message.id == "x"


# -- ids -----------------------------------------------------------------------------------


def test_uuid7_ids_are_version_7_rfc_variant() -> None:
    value = uuid.UUID(uuid7())

    assert value.version == 7
    assert value.variant == uuid.RFC_4122


def test_uuid7_carries_the_current_time_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    value = uuid.UUID(uuid7())
    after = time.time_ns() // 1_000_000

    assert before <= value.int >> 80 <= after + 1


def test_uuid7_ids_are_strictly_increasing() -> None:
    ids = [uuid7() for _ in range(20_000)]

    assert all(a < b for a, b in itertools.pairwise(ids))
    numbers = [uuid.UUID(i).int for i in ids]
    assert all(a < b for a, b in itertools.pairwise(numbers))


def test_uuid7_ids_are_unique_across_threads() -> None:
    results: list[list[str]] = [[] for _ in range(4)]

    def make(into: list[str]) -> None:
        into.extend(uuid7() for _ in range(5_000))

    threads = [threading.Thread(target=make, args=(into,)) for into in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    everything = [i for into in results for i in into]
    assert len(set(everything)) == len(everything)
    for into in results:
        assert into == sorted(into)


# -- headers of sent messages ---------------------------------------------------------------


def test_a_sent_message_has_every_well_known_header(clock) -> None:
    seen: list[Headers] = []

    @command_handler
    def place(command: PlaceOrder, headers: Headers) -> None:
        seen.append(headers)

    messaging = Messaging(handlers=[place], clock=clock)
    messaging.command_bus.send(PlaceOrder("o-1"))

    (headers,) = seen
    assert uuid.UUID(headers.id).version == 7
    assert headers.correlation_id == headers.id
    assert headers.causation_id is None
    assert "causation_id" not in headers
    assert headers.timestamp == clock.now
    assert headers.type == f"{__name__}.PlaceOrder"
    assert headers.content_type == "application/json"


def test_user_headers_given_at_send_reach_the_handler() -> None:
    seen: list[Headers] = []

    @command_handler
    def place(command: PlaceOrder, headers: Headers) -> None:
        seen.append(headers)

    messaging = Messaging(handlers=[place])
    messaging.command_bus.send(PlaceOrder("o-1"), headers={"tenant": "acme", "busway.kind": "x"})

    assert seen[0]["tenant"] == "acme"
    assert seen[0]["busway.kind"] == "command"


def test_each_message_of_a_type_carries_only_the_headers_of_its_own_send() -> None:
    seen: list[Headers] = []

    @command_handler
    def place(command: PlaceOrder, headers: Headers) -> None:
        seen.append(headers)

    messaging = Messaging(handlers=[place])
    messaging.command_bus.send(PlaceOrder("o-1"), headers={"tenant": "acme"}, ttl=60)
    messaging.command_bus.send(PlaceOrder("o-2"))

    first, second = seen
    assert first["tenant"] == "acme"
    assert "busway.expires_at" in first
    assert "tenant" not in second
    assert "busway.expires_at" not in second
    assert first.id != second.id
    assert second.correlation_id == second.id
    assert first.type == second.type == f"{__name__}.PlaceOrder"


class FlowRecorder:
    """Handlers of a three-step flow that record the headers of each message they handle."""

    def __init__(self) -> None:
        self.seen: dict[str, Headers] = {}


def _sync_flow(recorder: FlowRecorder, bus: type[CommandBus], events: type[EventBus]) -> list:
    @command_handler
    def place(command: PlaceOrder, headers: Headers, commands: bus) -> None:  # type: ignore[valid-type]
        recorder.seen["place"] = headers
        commands.send(ReserveStock(command.order_id), headers={"step": "reserve"})

    @command_handler
    def reserve(command: ReserveStock, headers: Headers, publisher: events) -> None:  # type: ignore[valid-type]
        recorder.seen["reserve"] = headers
        publisher.publish(StockReserved(command.order_id))

    @event_handler
    def reserved(event: StockReserved, headers: Headers) -> None:
        recorder.seen["reserved"] = headers

    return [place, reserve, reserved]


def _assert_flow(seen: dict[str, Headers]) -> None:
    place, reserve, reserved = seen["place"], seen["reserve"], seen["reserved"]
    assert len({place.id, reserve.id, reserved.id}) == 3
    assert place.correlation_id == place.id
    assert reserve.correlation_id == place.id
    assert reserved.correlation_id == place.id
    assert place.causation_id is None
    assert reserve.causation_id == place.id
    assert reserved.causation_id == reserve.id
    assert place["tenant"] == reserve["tenant"] == reserved["tenant"] == "acme"
    assert "step" not in place
    assert reserve["step"] == reserved["step"] == "reserve"


def test_correlation_causation_and_user_headers_follow_a_sync_flow() -> None:
    recorder = FlowRecorder()
    messaging = Messaging(handlers=_sync_flow(recorder, CommandBus, EventBus))

    messaging.command_bus.send(PlaceOrder("o-1"), headers={"tenant": "acme"})

    _assert_flow(recorder.seen)


def test_headers_given_while_handling_override_inherited_ones() -> None:
    seen: list[Headers] = []

    @command_handler
    def place(command: PlaceOrder, commands: CommandBus) -> None:
        commands.send(ReserveStock(command.order_id), headers={"tenant": "globex"})

    @command_handler
    def reserve(command: ReserveStock, headers: Headers) -> None:
        seen.append(headers)

    messaging = Messaging(handlers=[place, reserve])
    messaging.command_bus.send(PlaceOrder("o-1"), headers={"tenant": "acme", "user": "ann"})

    assert seen[0]["tenant"] == "globex"
    assert seen[0]["user"] == "ann"


def test_no_message_leaks_into_the_next_send_after_handling() -> None:
    seen: list[Headers] = []

    @command_handler
    def place(command: PlaceOrder, headers: Headers) -> None:
        seen.append(headers)

    messaging = Messaging(handlers=[place])
    messaging.command_bus.send(PlaceOrder("o-1"), headers={"tenant": "acme"})
    messaging.command_bus.send(PlaceOrder("o-2"))

    assert seen[1].causation_id is None
    assert seen[1].correlation_id == seen[1].id != seen[0].correlation_id
    assert "tenant" not in seen[1]


async def test_correlation_causation_and_user_headers_follow_an_asyncio_flow() -> None:
    seen: dict[str, Headers] = {}

    @command_handler
    async def place(command: PlaceOrder, headers: Headers, commands: CommandBus) -> None:
        seen["place"] = headers
        await asyncio.sleep(0)
        await commands.asend(ReserveStock(command.order_id), headers={"step": "reserve"})

    @command_handler
    async def reserve(command: ReserveStock, headers: Headers, events: EventBus) -> None:
        seen["reserve"] = headers
        await events.apublish(StockReserved(command.order_id))

    @event_handler
    async def reserved(event: StockReserved, headers: Headers) -> None:
        seen["reserved"] = headers

    messaging = Messaging(handlers=[place, reserve, reserved])
    await messaging.command_bus.asend(PlaceOrder("o-1"), headers={"tenant": "acme"})

    _assert_flow(seen)


async def test_headers_propagate_into_tasks_started_by_a_handler() -> None:
    seen: list[Headers] = []
    parent: list[Headers] = []

    @command_handler
    async def place(command: PlaceOrder, headers: Headers, events: EventBus) -> None:
        parent.append(headers)
        await asyncio.gather(
            asyncio.create_task(events.apublish(StockReserved("a"))),
            asyncio.create_task(events.apublish(StockReserved("b"))),
        )

    @event_handler
    async def reserved(event: StockReserved, headers: Headers) -> None:
        seen.append(headers)

    messaging = Messaging(handlers=[place, reserved])
    await messaging.command_bus.asend(PlaceOrder("o-1"), headers={"tenant": "acme"})

    assert len(seen) == 2
    for headers in seen:
        assert headers.causation_id == parent[0].id
        assert headers.correlation_id == parent[0].id
        assert headers["tenant"] == "acme"


def test_headers_propagate_across_async_hops_through_a_channel() -> None:
    recorder = FlowRecorder()
    messaging = Messaging(
        handlers=_sync_flow(recorder, AsyncCommandBus, AsyncEventBus),
        channels=[InMemoryChannel("async")],
    )

    messaging.gateway(AsyncCommandBus).send(PlaceOrder("o-1"), headers={"tenant": "acme"})
    assert recorder.seen == {}
    result = messaging.run("async")

    assert result.handled == 3
    assert result.failed == 0
    _assert_flow(recorder.seen)


async def test_headers_propagate_across_async_hops_with_arun() -> None:
    seen: dict[str, Headers] = {}

    @command_handler
    async def place(command: PlaceOrder, headers: Headers, commands: AsyncCommandBus) -> None:
        seen["place"] = headers
        await commands.asend(ReserveStock(command.order_id), headers={"step": "reserve"})

    @command_handler
    def reserve(command: ReserveStock, headers: Headers, events: AsyncEventBus) -> None:
        seen["reserve"] = headers
        events.publish(StockReserved(command.order_id))

    @event_handler
    async def reserved(event: StockReserved, headers: Headers) -> None:
        seen["reserved"] = headers

    messaging = Messaging(handlers=[place, reserve, reserved], channels=[InMemoryChannel("async")])
    await messaging.gateway(AsyncCommandBus).asend(PlaceOrder("o-1"), headers={"tenant": "acme"})
    result = await messaging.arun("async")

    assert result.handled == 3
    _assert_flow(seen)


def test_headers_propagate_on_worker_threads() -> None:
    lock = threading.Lock()
    parents: dict[str, Headers] = {}
    children: dict[str, Headers] = {}
    threads: set[str] = set()

    @command_handler
    def place(command: PlaceOrder, headers: Headers, commands: AsyncCommandBus) -> None:
        with lock:
            parents[command.order_id] = headers
            threads.add(threading.current_thread().name)
        commands.send(ReserveStock(command.order_id))

    @command_handler
    def reserve(command: ReserveStock, headers: Headers) -> None:
        with lock:
            children[command.order_id] = headers
            threads.add(threading.current_thread().name)

    messaging = Messaging(handlers=[place, reserve], channels=[InMemoryChannel("async")])
    bus = messaging.gateway(AsyncCommandBus)
    for number in range(40):
        bus.send(PlaceOrder(f"o-{number}"), headers={"request": f"r-{number}"})

    result = messaging.run("async", concurrency=2)

    assert result.handled == 80
    assert len(children) == 40
    assert all(name.startswith("busway-worker-") for name in threads)
    for order_id, child in children.items():
        parent = parents[order_id]
        assert child.causation_id == parent.id
        assert child.correlation_id == parent.correlation_id == parent.id
        assert child["request"] == parent["request"] == f"r-{order_id[2:]}"
