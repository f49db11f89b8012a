"""busway.fastapi's wiring: the lifespan, the gateway dependencies, and the mistakes it names.

The routes are made inside functions, so this module evaluates annotations where they are
written (no ``from __future__ import annotations``): FastAPI reads them.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from busway import (
    ConfigurationError,
    EventBus,
    Gateway,
    InMemoryChannel,
    Messaging,
    SqlChannel,
    asynchronous,
    event_handler,
    query_handler,
)
from busway.errors import SetupRequired
from busway.fastapi import Busway, TransactionMiddleware
from busway.gateways import route
from busway.testing import record, run_until_idle


@dataclass
class PageWasSeen:
    path: str


@asynchronous("later")
class LaterEventBus(EventBus):
    """Events published here are handled by a worker."""


seen: list[str] = []


@event_handler
def note(event: PageWasSeen) -> None:
    seen.append(event.path)


@pytest.mark.parametrize("setup", [True, False])
def test_the_lifespan_builds_the_messaging_and_sets_it_up(tmp_path: Path, setup: bool) -> None:
    built: list[Messaging] = []

    def build() -> Messaging:
        database = f"sqlite:///{tmp_path / 'web.db'}"
        built.append(
            Messaging(channels=[SqlChannel("outbox")], database=database, auto_setup=False)
        )
        return built[-1]

    busway = Busway(build, setup=setup)
    app = FastAPI(lifespan=busway.lifespan)
    with pytest.raises(RuntimeError, match="built when the app starts"):
        _ = busway.messaging

    with TestClient(app):
        assert busway.messaging is built[0]
        if setup:
            assert busway.messaging.channel("outbox").depth() == 0
        else:
            with pytest.raises(SetupRequired):
                busway.messaging.channel("outbox").depth()

    with pytest.raises(RuntimeError, match=r"lifespan=busway\.lifespan"):
        _ = busway.messaging


def test_a_route_gets_its_gateway_from_a_dependency() -> None:
    seen.clear()
    messaging = Messaging(handlers=[note], channels=[InMemoryChannel("later")])
    busway = Busway(messaging)
    app = FastAPI(lifespan=busway.lifespan)

    @app.get("/{path}")
    def page(
        path: str, events: Annotated[LaterEventBus, Depends(busway.gateway(LaterEventBus))]
    ) -> dict[str, str]:
        events.publish(PageWasSeen(path))
        return {"path": path}

    with TestClient(app) as client, record(messaging) as recorded:
        assert client.get("/home").status_code == 200
        assert recorded.sent(LaterEventBus) == [PageWasSeen("home")]
        assert seen == []
        run_until_idle(messaging)
    assert seen == ["home"]
    assert busway.gateway(LaterEventBus) is busway.gateway(LaterEventBus)


def test_a_test_can_override_a_gateway_dependency() -> None:
    messaging = Messaging(handlers=[note], channels=[InMemoryChannel("later")])
    busway = Busway(messaging)
    app = FastAPI()
    given: list[object] = []

    class Collecting:
        def publish(self, event: object) -> None:
            given.append(event)

    @app.get("/{path}")
    def page(
        path: str, events: Annotated[LaterEventBus, Depends(busway.gateway(LaterEventBus))]
    ) -> None:
        events.publish(PageWasSeen(path))

    app.dependency_overrides[busway.gateway(LaterEventBus)] = Collecting
    assert TestClient(app).get("/about").status_code == 200
    assert given == [PageWasSeen("about")]


def test_a_route_taking_the_session_without_the_middleware_fails_at_start_up(
    tmp_path: Path,
) -> None:
    messaging = Messaging(channels=[SqlChannel("outbox")], database=f"sqlite:///{tmp_path}/a.db")
    busway = Busway(messaging)
    app = FastAPI(lifespan=busway.lifespan)

    @app.post("/")
    async def write(session: Annotated[AsyncSession, Depends(busway.session)]) -> None:
        pass

    with pytest.raises(ConfigurationError, match=r"app.add_middleware\(TransactionMiddleware\)"):
        TestClient(app).__enter__()


async def test_a_session_on_another_database_is_refused(tmp_path: Path) -> None:
    messaging = Messaging(channels=[SqlChannel("outbox")], database=f"sqlite:///{tmp_path}/a.db")
    other = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/b.db")
    busway = Busway(messaging, sessions=async_sessionmaker(other))
    app = FastAPI(lifespan=busway.lifespan)
    app.add_middleware(TransactionMiddleware)

    @app.post("/")
    async def write(session: Annotated[AsyncSession, Depends(busway.session)]) -> None:
        pass

    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t") as client,
    ):
        with pytest.raises(ConfigurationError, match="not on the messaging database"):
            await client.post("/")
    await other.dispose()


def test_a_route_taking_the_session_without_a_database_fails_at_start_up() -> None:
    busway = Busway(Messaging(channels=[InMemoryChannel("later")]))
    app = FastAPI(lifespan=busway.lifespan)
    app.add_middleware(TransactionMiddleware)

    @app.post("/")
    async def write(session: Annotated[AsyncSession, Depends(busway.session)]) -> None:
        pass

    with pytest.raises(ConfigurationError, match=r"needs Messaging\(database=\.\.\.\)"):
        TestClient(app).__enter__()


@asynchronous("outbox")
class OutboxEventBus(EventBus):
    """Events published here commit with the request."""


def test_a_route_is_tested_with_record_and_the_test_client(tmp_path: Path) -> None:
    """What docs/fastapi.md shows: the outbox on a SQLite file, TestClient and record."""
    seen.clear()
    messaging = Messaging(
        handlers=[note], channels=[SqlChannel("outbox")], database=f"sqlite:///{tmp_path}/t.db"
    )
    busway = Busway(messaging)
    app = FastAPI(lifespan=busway.lifespan)
    app.add_middleware(TransactionMiddleware)

    @app.post("/{path}")
    async def page(
        path: str,
        session: Annotated[AsyncSession, Depends(busway.session)],
        events: Annotated[OutboxEventBus, Depends(busway.gateway(OutboxEventBus))],
    ) -> None:
        await events.apublish(PageWasSeen(path))

    with TestClient(app) as client, record(messaging) as recorded:
        assert client.post("/home").status_code == 200
        assert recorded.sent(OutboxEventBus) == [PageWasSeen("home")]
        run_until_idle(messaging)
    assert seen == ["home"]


class Prices(Gateway):
    """A business interface: busway implements it."""

    @route("price")
    async def price(self, product: str) -> Any: ...


@query_handler("price")
def price_of(product: str) -> int:
    return {"book": 12, "pen": 2}[product]


def test_a_route_gets_a_business_interface_from_a_dependency() -> None:
    busway = Busway(Messaging(handlers=[price_of]))
    app = FastAPI(lifespan=busway.lifespan)

    @app.get("/prices/{product}")
    async def price(
        product: str, prices: Annotated[Prices, Depends(busway.gateway(Prices))]
    ) -> Any:
        return {"price": await prices.price(product)}

    with TestClient(app) as client:
        assert client.get("/prices/book").json() == {"price": 12}
