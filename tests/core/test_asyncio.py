import asyncio
import gc
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import pytest

from busway import (
    CommandBus,
    EventBus,
    Gateway,
    Headers,
    InMemoryChannel,
    Messaging,
    QueryBus,
    asynchronous,
    command_handler,
    event_handler,
    query_handler,
    route,
)


@dataclass
class Wait:
    name: str


@dataclass
class Release:
    name: str


@dataclass
class Lookup:
    key: str


@dataclass
class Looked:
    key: str


@asynchronous("async")
class AsyncCommandBus(CommandBus):
    pass


async def test_concurrent_sends_keep_their_own_headers() -> None:
    seen: list[tuple[str, Any, Any]] = []

    @command_handler
    async def wait(command: Wait, headers: Headers, events: EventBus) -> None:
        await asyncio.sleep(0)
        await events.apublish(Looked(command.name))
        seen.append((command.name, headers["request"], headers.id))

    children: dict[str, Headers] = {}

    @event_handler
    async def looked(event: Looked, headers: Headers) -> None:
        await asyncio.sleep(0)
        children[event.key] = headers

    messaging = Messaging(handlers=[wait, looked])
    bus = messaging.command_bus

    await asyncio.gather(
        *(bus.asend(Wait(f"w-{n}"), headers={"request": f"r-{n}"}) for n in range(20))
    )

    assert len(seen) == 20
    for name, request, message_id in seen:
        assert request == f"r-{name[2:]}"
        assert children[name]["request"] == request
        assert children[name].causation_id == message_id


async def test_async_handlers_run_on_the_callers_loop_and_interleave() -> None:
    released = asyncio.Event()
    order: list[str] = []

    @command_handler
    async def wait(command: Wait) -> str:
        order.append("waiting")
        await released.wait()
        order.append("released")
        return command.name

    @command_handler
    async def release(command: Release) -> None:
        order.append("releasing")
        released.set()

    messaging = Messaging(handlers=[wait, release])
    bus = messaging.command_bus

    results = await asyncio.gather(bus.asend(Wait("w")), bus.asend(Release("r")))

    assert results == ["w", None]
    assert order == ["waiting", "releasing", "released"]


async def test_an_async_query_handler_answers_through_asend_and_send() -> None:
    @query_handler
    async def lookup(query: Lookup) -> dict[str, str]:
        await asyncio.sleep(0)
        return {"key": query.key}

    messaging = Messaging(handlers=[lookup])
    queries = messaging.gateway(QueryBus)

    assert await queries.asend(Lookup("a")) == {"key": "a"}
    assert queries.send(Lookup("b")) == {"key": "b"}


def test_an_async_handler_reached_from_sync_code_can_await_the_asyncio_bus() -> None:
    seen: dict[str, Headers] = {}

    @command_handler
    async def wait(command: Wait, headers: Headers, commands: CommandBus) -> str:
        seen["wait"] = headers
        return str(await commands.asend(Release(command.name)))

    @command_handler
    async def release(command: Release, headers: Headers) -> str:
        seen["release"] = headers
        return f"released {command.name}"

    messaging = Messaging(handlers=[wait, release])

    assert messaging.command_bus.send(Wait("w"), headers={"tenant": "acme"}) == "released w"
    assert seen["release"].causation_id == seen["wait"].id
    assert seen["release"]["tenant"] == "acme"


async def test_an_async_business_gateway_method_from_an_async_handler() -> None:
    class Lookups(Gateway):
        @route("lookup")
        async def lookup(self, payload: Any) -> Any: ...

    @query_handler("lookup")
    async def lookup(payload: Any) -> str:
        return f"found {payload}"

    @command_handler
    async def wait(command: Wait, lookups: Lookups) -> Any:
        return await lookups.lookup(command.name)

    messaging = Messaging(handlers=[lookup, wait])

    assert await messaging.command_bus.asend(Wait("x")) == "found x"


async def test_arun_runs_async_and_sync_handlers_on_this_loop() -> None:
    loops: list[Any] = []
    threads: list[threading.Thread] = []

    @command_handler
    async def wait(command: Wait) -> None:
        loops.append(asyncio.get_running_loop())

    @command_handler
    def release(command: Release) -> None:
        threads.append(threading.current_thread())

    messaging = Messaging(handlers=[wait, release], channels=[InMemoryChannel("async")])
    bus = messaging.gateway(AsyncCommandBus)
    await bus.asend(Wait("w"))
    await bus.asend(Release("r"))

    result = await messaging.arun("async")

    assert result.handled == 2
    assert loops == [asyncio.get_running_loop()]
    assert threads == [threading.current_thread()]


def test_async_handlers_on_worker_threads_keep_the_flow() -> None:
    lock = threading.Lock()
    parents: dict[str, Headers] = {}
    children: dict[str, Headers] = {}

    @command_handler
    async def wait(command: Wait, headers: Headers, commands: AsyncCommandBus) -> None:
        with lock:
            parents[command.name] = headers
        await commands.asend(Release(command.name))

    @command_handler
    async def release(command: Release, headers: Headers) -> None:
        with lock:
            children[command.name] = headers

    messaging = Messaging(handlers=[wait, release], channels=[InMemoryChannel("async")])
    for number in range(10):
        messaging.gateway(AsyncCommandBus).send(Wait(f"w-{number}"), {"request": str(number)})

    result = messaging.run("async", concurrency=2)

    assert (result.handled, result.failed) == (20, 0)
    assert len(children) == 10
    for name, child in children.items():
        assert child.causation_id == parents[name].id
        assert child.correlation_id == parents[name].correlation_id
        assert child["request"] == parents[name]["request"] == name[2:]


def test_a_sync_bus_reaching_an_async_handler_from_the_helper_loop_explains_itself() -> None:
    @command_handler
    async def wait(command: Wait, commands: CommandBus) -> None:
        await commands.asend(Release(command.name))

    @command_handler
    def release(command: Release, events: EventBus) -> None:
        events.publish(Looked(command.name))

    @event_handler
    async def looked(event: Looked) -> None:
        pass

    messaging = Messaging(handlers=[wait, release, looked])

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeError, match=r"await bus\.asend"):
            messaging.command_bus.send(Wait("w"))
        gc.collect()
