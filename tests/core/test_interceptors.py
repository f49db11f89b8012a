import asyncio
import re
import threading
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, MetaData, String, Table, create_engine, insert, select
from sqlalchemy.orm import Session

from busway import (
    CommandBus,
    ConfigurationError,
    HandlerInfo,
    InMemoryChannel,
    Interceptor,
    Invocation,
    Messaging,
    SqlChannel,
    asynchronous,
    command_handler,
    event_handler,
    query_handler,
)
from busway.handlers import Kind


@dataclass
class PlaceOrder:
    order_id: str


@dataclass
class OrderWasPlaced:
    order_id: str


@dataclass
class CountOrders:
    pass


class Recording(Interceptor):
    """Records every hook it sees, under its own name."""

    def __init__(self, name: str, log: list[str], order: int = 500) -> None:
        self.name = name
        self.log = log
        self.order = order

    def before(self, invocation: Invocation) -> None:
        self.log.append(f"before {self.name}")

    def around(self, invocation: Invocation, proceed: Callable[[], Any]) -> Any:
        self.log.append(f"enter {self.name}")
        result = proceed()
        self.log.append(f"leave {self.name}")
        return result

    async def aaround(self, invocation: Invocation, proceed: Callable[[], Awaitable[Any]]) -> Any:
        self.log.append(f"aenter {self.name}")
        result = await proceed()
        self.log.append(f"aleave {self.name}")
        return result

    def after(self, invocation: Invocation, result: Any) -> None:
        self.log.append(f"after {self.name} {result}")

    def failed(self, invocation: Invocation, error: BaseException) -> None:
        self.log.append(f"failed {self.name} {error}")


def _messaging(log: list[str], *interceptors: Interceptor, fail: bool = False) -> Messaging:
    @command_handler
    def place(command: PlaceOrder) -> str:
        log.append("handler")
        if fail:
            raise RuntimeError("boom")
        return "ok"

    @command_handler
    async def place_async(command: OrderWasPlaced) -> str:
        log.append("async handler")
        if fail:
            raise RuntimeError("boom")
        return "ok"

    return Messaging(handlers=[place, place_async], interceptors=interceptors)


def test_hooks_run_in_order_of_order_lowest_outermost() -> None:
    log: list[str] = []
    messaging = _messaging(
        log, Recording("c", log, 300), Recording("a", log, 100), Recording("b", log, 200)
    )

    assert messaging.command_bus.send(PlaceOrder("o-1")) == "ok"

    assert log == [
        "before a",
        "before b",
        "before c",
        "enter a",
        "enter b",
        "enter c",
        "handler",
        "leave c",
        "leave b",
        "leave a",
        "after a ok",
        "after b ok",
        "after c ok",
    ]


def test_equal_orders_keep_the_order_they_were_given_in() -> None:
    log: list[str] = []
    messaging = _messaging(log, Recording("first", log), Recording("second", log))

    messaging.command_bus.send(PlaceOrder("o-1"))

    assert log[:2] == ["before first", "before second"]
    assert log[2:4] == ["enter first", "enter second"]


def test_failed_hooks_see_the_error_and_it_goes_on() -> None:
    log: list[str] = []
    messaging = _messaging(log, Recording("b", log, 200), Recording("a", log, 100), fail=True)

    with pytest.raises(RuntimeError, match="boom"):
        messaging.command_bus.send(PlaceOrder("o-1"))

    assert log == [
        "before a",
        "before b",
        "enter a",
        "enter b",
        "handler",
        "failed a boom",
        "failed b boom",
    ]


async def test_aaround_wraps_handlers_on_the_asyncio_path() -> None:
    log: list[str] = []
    messaging = _messaging(log, Recording("b", log, 200), Recording("a", log, 100))

    assert await messaging.command_bus.asend(OrderWasPlaced("o-1")) == "ok"
    assert await messaging.command_bus.asend(PlaceOrder("o-1")) == "ok"

    expected = [
        "before a",
        "before b",
        "aenter a",
        "aenter b",
        "async handler",
        "aleave b",
        "aleave a",
        "after a ok",
        "after b ok",
    ]
    assert log == expected + [e.replace("async handler", "handler") for e in expected]


def test_aaround_wraps_an_async_handler_reached_from_the_sync_front_door() -> None:
    log: list[str] = []
    messaging = _messaging(log, Recording("a", log))

    assert messaging.command_bus.send(OrderWasPlaced("o-1")) == "ok"

    assert log == ["before a", "aenter a", "async handler", "aleave a", "after a ok"]


async def test_failed_hooks_on_the_asyncio_path() -> None:
    log: list[str] = []
    messaging = _messaging(log, Recording("a", log), fail=True)

    with pytest.raises(RuntimeError, match="boom"):
        await messaging.command_bus.asend(OrderWasPlaced("o-1"))

    assert log == ["before a", "aenter a", "async handler", "failed a boom"]


def test_around_may_replace_the_result_and_see_the_invocation() -> None:
    seen: list[Invocation] = []

    class Doubling(Interceptor):
        def around(self, invocation: Invocation, proceed: Callable[[], Any]) -> Any:
            seen.append(invocation)
            return proceed() * 2

    @query_handler
    def count(query: CountOrders) -> int:
        return 21

    messaging = Messaging(handlers=[count], interceptors=[Doubling()])

    assert messaging.query_bus.send(CountOrders(), headers={"tenant": "acme"}) == 42
    (invocation,) = seen
    assert invocation.message.payload == CountOrders()
    assert invocation.message.headers["tenant"] == "acme"
    assert invocation.handler.kind is Kind.QUERY
    assert invocation.handler.name == f"{__name__}.{count.__qualname__}"
    assert invocation.handler.payload_type is CountOrders
    assert invocation.delivery is None


def test_around_may_skip_the_handler() -> None:
    handled: list[str] = []

    class Blocking(Interceptor):
        def around(self, invocation: Invocation, proceed: Callable[[], Any]) -> Any:
            return "blocked"

    @command_handler
    def place(command: PlaceOrder) -> str:
        handled.append(command.order_id)
        return "placed"

    messaging = Messaging(handlers=[place], interceptors=[Blocking()])

    assert messaging.command_bus.send(PlaceOrder("o-1")) == "blocked"
    assert handled == []


def test_applies_to_chooses_the_handlers_an_interceptor_wraps() -> None:
    log: list[str] = []

    class CommandsOnly(Recording):
        def applies_to(self, handler: HandlerInfo) -> bool:
            return handler.kind is Kind.COMMAND

    class OnlyTheAsynchronous(Recording):
        def applies_to(self, handler: HandlerInfo) -> bool:
            return handler.channels == ("async",)

    @command_handler
    def place(command: PlaceOrder) -> None:
        log.append("place")

    @event_handler
    def placed(event: OrderWasPlaced) -> None:
        log.append("placed")

    @asynchronous("async")
    @event_handler
    def placed_later(event: OrderWasPlaced) -> None:
        log.append("placed later")

    messaging = Messaging(
        handlers=[place, placed, placed_later],
        channels=[InMemoryChannel("async")],
        interceptors=[CommandsOnly("commands", log), OnlyTheAsynchronous("async", log)],
    )

    messaging.command_bus.send(PlaceOrder("o-1"))
    assert log == [
        "before commands",
        "enter commands",
        "place",
        "leave commands",
        "after commands None",
    ]

    log.clear()
    messaging.event_bus.publish(OrderWasPlaced("o-1"))
    assert log == ["placed"]

    log.clear()
    messaging.run("async")
    assert log == [
        "before async",
        "enter async",
        "placed later",
        "leave async",
        "after async None",
    ]


def test_interceptors_see_the_delivery_when_a_worker_runs_the_handler() -> None:
    deliveries: list[Any] = []

    class Watching(Interceptor):
        def before(self, invocation: Invocation) -> None:
            deliveries.append(invocation.delivery)

    @asynchronous("async")
    class AsyncCommandBus(CommandBus):
        pass

    @command_handler
    def place(command: PlaceOrder) -> None:
        pass

    messaging = Messaging(
        handlers=[place], channels=[InMemoryChannel("async")], interceptors=[Watching()]
    )
    messaging.gateway(AsyncCommandBus).send(PlaceOrder("o-1"))
    messaging.run("async")

    (delivery,) = deliveries
    assert delivery.channel == "async"
    assert delivery.envelope.headers["type"] == f"{__name__}.PlaceOrder"


def test_a_failing_handler_run_by_a_worker_reaches_the_failed_hook() -> None:
    log: list[str] = []

    @asynchronous("async")
    @command_handler
    def place(command: PlaceOrder) -> None:
        raise RuntimeError("boom")

    messaging = Messaging(
        handlers=[place], channels=[InMemoryChannel("async")], interceptors=[Recording("a", log)]
    )
    messaging.command_bus.send(PlaceOrder("o-1"))
    messaging.run("async")

    assert "failed a boom" in log


# -- every interceptor runs on every path ---------------------------------------------------------


class AroundOnly(Interceptor):
    """Overrides only ``around``: it tags the result, so its running shows. It leaves
    ``async def`` handlers out, which it could not wrap."""

    def __init__(self, log: list[str], order: int = 500) -> None:
        self.log = log
        self.order = order

    def applies_to(self, handler: HandlerInfo) -> bool:
        return not handler.is_coroutine

    def around(self, invocation: Invocation, proceed: Callable[[], Any]) -> Any:
        self.log.append(f"around {invocation.message.payload.order_id}")
        return f"{proceed()}+around"


tenant: ContextVar[str] = ContextVar("tenant", default="none")


class AaroundOnly(Interceptor):
    """Overrides only ``aaround``, which really awaits, and sets a context variable for what
    it wraps."""

    def __init__(self, log: list[str], order: int = 500) -> None:
        self.log = log
        self.order = order

    async def aaround(self, invocation: Invocation, proceed: Callable[[], Awaitable[Any]]) -> Any:
        await asyncio.sleep(0)
        self.log.append(f"aaround {invocation.message.payload.order_id}")
        token = tenant.set("acme")
        try:
            return f"{await proceed()}+aaround"
        finally:
            tenant.reset(token)


@asynchronous("async")
class AsyncCommandBus(CommandBus):
    pass


def _on_every_path(log: list[str], interceptor: Interceptor) -> Messaging:
    @command_handler
    def place(command: PlaceOrder) -> str:
        log.append(f"handled {command.order_id} tenant={tenant.get()}")
        return "ok"

    return Messaging(
        handlers=[place], channels=[InMemoryChannel("async")], interceptors=[interceptor]
    )


def test_an_around_only_interceptor_runs_for_send_and_run() -> None:
    log: list[str] = []
    messaging = _on_every_path(log, AroundOnly(log))

    assert messaging.command_bus.send(PlaceOrder("send")) == "ok+around"
    messaging.gateway(AsyncCommandBus).send(PlaceOrder("run"))
    assert messaging.run("async").handled == 1

    assert log == [
        "around send",
        "handled send tenant=none",
        "around run",
        "handled run tenant=none",
    ]


async def test_an_around_only_interceptor_runs_for_asend_and_arun() -> None:
    log: list[str] = []
    messaging = _on_every_path(log, AroundOnly(log))

    assert await messaging.command_bus.asend(PlaceOrder("asend")) == "ok+around"
    await messaging.gateway(AsyncCommandBus).asend(PlaceOrder("arun"))
    assert (await messaging.arun("async")).handled == 1

    assert log == [
        "around asend",
        "handled asend tenant=none",
        "around arun",
        "handled arun tenant=none",
    ]


def test_an_aaround_only_interceptor_runs_for_send_and_run_the_handler_on_its_thread() -> None:
    log: list[str] = []
    threads: list[threading.Thread] = []

    class OnThread(AaroundOnly):
        def before(self, invocation: Invocation) -> None:
            threads.append(threading.current_thread())

    messaging = _on_every_path(log, OnThread(log))

    assert messaging.command_bus.send(PlaceOrder("send")) == "ok+aaround"
    messaging.gateway(AsyncCommandBus).send(PlaceOrder("run"))
    assert messaging.run("async").handled == 1

    assert log == [
        "aaround send",
        "handled send tenant=acme",
        "aaround run",
        "handled run tenant=acme",
    ]
    assert threads == [threading.current_thread()] * 2
    assert tenant.get() == "none"


async def test_an_aaround_only_interceptor_runs_for_asend_and_arun() -> None:
    log: list[str] = []
    messaging = _on_every_path(log, AaroundOnly(log))

    assert await messaging.command_bus.asend(PlaceOrder("asend")) == "ok+aaround"
    await messaging.gateway(AsyncCommandBus).asend(PlaceOrder("arun"))
    assert (await messaging.arun("async")).handled == 1

    assert log == [
        "aaround asend",
        "handled asend tenant=acme",
        "aaround arun",
        "handled arun tenant=acme",
    ]


def test_a_def_handler_under_an_aaround_only_interceptor_may_send_through_the_sync_bus() -> None:
    log: list[str] = []

    @command_handler
    def place(command: PlaceOrder, bus: CommandBus) -> str:
        log.append(f"place {command.order_id}")
        return str(bus.send(OrderWasPlaced(f"{command.order_id}'")))

    @command_handler
    def confirm(command: OrderWasPlaced) -> str:
        log.append(f"confirm {command.order_id}")
        return "confirmed"

    messaging = Messaging(handlers=[place, confirm], interceptors=[AaroundOnly(log)])

    assert messaging.command_bus.send(PlaceOrder("o-1")) == "confirmed+aaround+aaround"
    assert log == ["aaround o-1", "place o-1", "aaround o-1'", "confirm o-1'"]


def test_an_aaround_only_interceptor_sees_the_error_of_what_it_wraps_on_the_sync_path() -> None:
    seen: list[str] = []

    class Catching(Interceptor):
        async def aaround(
            self, invocation: Invocation, proceed: Callable[[], Awaitable[Any]]
        ) -> Any:
            try:
                return await proceed()
            except RuntimeError as error:
                seen.append(str(error))
                raise

    log: list[str] = []
    messaging = _messaging(log, Catching(), fail=True)

    with pytest.raises(RuntimeError, match="boom"):
        messaging.command_bus.send(PlaceOrder("o-1"))
    assert seen == ["boom"]


async def test_on_the_asyncio_path_a_def_handler_runs_synchronously_within_around_only() -> None:
    """From the outermost interceptor with only ``around`` inward, ``around`` hooks run."""
    log: list[str] = []

    class Marking(Interceptor):
        def __init__(self, order: int) -> None:
            self.order = order

        def applies_to(self, handler: HandlerInfo) -> bool:
            return not handler.is_coroutine

        def around(self, invocation: Invocation, proceed: Callable[[], Any]) -> Any:
            log.append("enter sync unit")
            return proceed()

    messaging = _messaging(log, Recording("a", log, 100), Marking(200), Recording("b", log, 300))

    assert await messaging.command_bus.asend(PlaceOrder("o-1")) == "ok"

    assert log == [
        "before a",
        "before b",
        "aenter a",
        "enter sync unit",
        "enter b",
        "handler",
        "leave b",
        "aleave a",
        "after a ok",
        "after b ok",
    ]


# -- on a SQL channel, both worker edges ----------------------------------------------------------


metadata = MetaData()
effects = Table("effects", metadata, Column("order_id", String(50)), Column("by", String(20)))


class AuditInside(Interceptor):
    """Overrides only ``around``; inside the transaction, it writes through the Session."""

    order = 850

    def around(self, invocation: Invocation, proceed: Callable[[], Any]) -> Any:
        session = invocation.resources[Session]()
        session.execute(
            insert(effects).values(order_id=invocation.message.payload.order_id, by="audit")
        )
        return proceed()


class AaroundOutside(Interceptor):
    """Overrides only ``aaround``, outside the transaction."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def aaround(self, invocation: Invocation, proceed: Callable[[], Awaitable[Any]]) -> Any:
        await asyncio.sleep(0)
        self.log.append(invocation.message.payload.order_id)
        return await proceed()


def _on_sqlite(tmp_path: Path, log: list[str]) -> tuple[Messaging, str]:
    url = f"sqlite:///{tmp_path / 'orders.db'}"
    engine = create_engine(url)
    metadata.create_all(engine)
    engine.dispose()

    @asynchronous("jobs")
    @command_handler
    def place(command: PlaceOrder, session: Session) -> None:
        session.execute(insert(effects).values(order_id=command.order_id, by="handler"))

    messaging = Messaging(
        handlers=[place],
        channels=[SqlChannel("jobs")],
        database=url,
        interceptors=[AuditInside(), AaroundOutside(log)],
    )
    return messaging, url


def _effects(url: str) -> list[tuple[str, str]]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(effects.c.order_id, effects.c.by)).all()
        return sorted((row[0], row[1]) for row in rows)
    finally:
        engine.dispose()


def test_interceptors_of_either_kind_run_when_a_sync_worker_runs_a_sql_channel(
    tmp_path: Path,
) -> None:
    log: list[str] = []
    messaging, url = _on_sqlite(tmp_path, log)
    try:
        messaging.command_bus.send(PlaceOrder("o-1"))
        assert messaging.run("jobs").handled == 1
    finally:
        messaging.close()

    assert log == ["o-1"]
    assert _effects(url) == [("o-1", "audit"), ("o-1", "handler")]


async def test_interceptors_of_either_kind_run_when_arun_runs_a_sql_channel(
    tmp_path: Path,
) -> None:
    log: list[str] = []
    messaging, url = _on_sqlite(tmp_path, log)
    try:
        await messaging.command_bus.asend(PlaceOrder("o-1"))
        assert (await messaging.arun("jobs")).handled == 1
    finally:
        await messaging.aclose()

    assert log == ["o-1"]
    assert _effects(url) == [("o-1", "audit"), ("o-1", "handler")]


# -- refused at start-up: what cannot run soundly -------------------------------------------------


class Doubling(Interceptor):
    def around(self, invocation: Invocation, proceed: Callable[[], Any]) -> Any:
        return proceed() * 2


def test_an_around_only_interceptor_that_applies_to_an_async_def_handler_is_refused() -> None:
    @command_handler
    async def place(command: PlaceOrder) -> str:
        return "ok"

    with pytest.raises(ConfigurationError) as refused:
        Messaging(handlers=[place], interceptors=[Doubling()])

    assert str(refused.value) == (
        "Interceptor Doubling overrides around but not aaround, and applies to the async def "
        f"handler {__name__}.{place.__qualname__}: define aaround too, or exclude it in "
        "applies_to"
    )


def test_an_around_only_interceptor_that_leaves_async_def_handlers_out_is_not_refused() -> None:
    class DoublingDefs(Doubling):
        def applies_to(self, handler: HandlerInfo) -> bool:
            return not handler.is_coroutine

    @query_handler
    async def count(query: CountOrders) -> int:
        return 21

    messaging = Messaging(handlers=[count], interceptors=[DoublingDefs()])

    assert messaging.query_bus.send(CountOrders()) == 21


def test_an_aaround_only_interceptor_inside_an_around_only_one_is_refused() -> None:
    log: list[str] = []

    @command_handler
    def place(command: PlaceOrder) -> str:
        return "ok"

    with pytest.raises(ConfigurationError) as refused:
        Messaging(handlers=[place], interceptors=[AaroundOnly(log, 600), AroundOnly(log, 100)])

    assert str(refused.value) == (
        "Interceptor AroundOnly overrides around but not aaround, so on the asyncio path it "
        f"runs synchronously with the def handler {__name__}.{place.__qualname__}, and "
        "AaroundOnly inside it (order 600) overrides aaround but not around: define aaround "
        "on AroundOnly too, or around on AaroundOnly"
    )


def test_an_aaround_only_interceptor_outside_an_around_only_one_runs_on_both_paths() -> None:
    log: list[str] = []
    messaging = _messaging(log, AaroundOnly(log, 100), AroundOnly(log, 600))

    assert messaging.command_bus.send(PlaceOrder("send")) == "ok+around+aaround"
    assert asyncio.run(messaging.command_bus.asend(PlaceOrder("asend"))) == "ok+around+aaround"

    assert log == [
        "aaround send",
        "around send",
        "handler",
        "aaround asend",
        "around asend",
        "handler",
    ]


def test_an_around_only_interceptor_outside_the_transaction_is_refused(tmp_path: Path) -> None:
    @command_handler
    def place(command: PlaceOrder) -> str:
        return "ok"

    with pytest.raises(ConfigurationError) as refused:
        Messaging(
            handlers=[place],
            database=f"sqlite:///{tmp_path / 'orders.db'}",
            interceptors=[Doubling()],
        )

    assert str(refused.value) == (
        "Interceptor Doubling overrides around but not aaround, so on the asyncio path it "
        f"runs synchronously with the def handler {__name__}.{place.__qualname__}, and "
        "TransactionInterceptor inside it (order 800) runs only by its aaround there: define "
        "aaround on Doubling too, or give it an order above 800"
    )


def test_one_refusal_names_every_handler_it_stops() -> None:
    @command_handler
    async def place(command: PlaceOrder) -> str:
        return "ok"

    @event_handler
    async def placed(event: OrderWasPlaced) -> None:
        pass

    with pytest.raises(ConfigurationError) as refused:
        Messaging(handlers=[place, placed], interceptors=[Doubling()])

    assert refused.value.problems == (
        "Interceptor Doubling overrides around but not aaround, and applies to the async def "
        f"handlers {__name__}.{place.__qualname__} and {__name__}.{placed.__qualname__}: "
        "define aaround too, or exclude it in applies_to",
    )


def test_every_refusal_is_reported_at_once(tmp_path: Path) -> None:
    log: list[str] = []

    @command_handler
    async def place(command: PlaceOrder) -> str:
        return "ok"

    @event_handler
    def placed(event: OrderWasPlaced) -> None:
        pass

    with pytest.raises(ConfigurationError, match=re.escape("3 problems")) as refused:
        Messaging(
            handlers=[place, placed],
            database=f"sqlite:///{tmp_path / 'orders.db'}",
            interceptors=[Doubling(), AaroundOnly(log, 600)],
        )

    first, second, third = refused.value.problems
    assert "applies to the async def handler" in first
    assert "AaroundOnly inside it (order 600) overrides aaround but not around" in second
    assert "TransactionInterceptor inside it (order 800) runs only by its aaround" in third
