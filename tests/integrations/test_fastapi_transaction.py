"""busway.fastapi: a route's business row and its outbox message commit together or not at all.

Each test runs against a SQLite file, PostgreSQL and MariaDB (``database_url``), through
``httpx.AsyncClient`` on the app, its lifespan entered as a server would. The routes are made
inside functions, so their annotations are evaluated where they are written (no
``from __future__ import annotations``): FastAPI reads them to find the dependencies.
"""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import Column, MetaData, String, Table, event, func, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from busway import EventBus, Messaging, SqlChannel, asynchronous, event_handler
from busway.fastapi import Busway, TransactionMiddleware
from dbsupport import create_tables, drop_tables

metadata = MetaData()
orders = Table("web_fastapi_orders", metadata, Column("order_id", String(50), primary_key=True))


@dataclass
class OrderWasPlaced:
    order_id: str


@asynchronous("outbox")
class OutboxEventBus(EventBus):
    """Events published here commit with the request."""


@dataclass
class Shop:
    app: FastAPI
    busway: Busway
    messaging: Messaging
    confirmed: list[str]
    published: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def rows(self) -> int:
        with self.messaging.database_engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(orders)).scalar_one())

    def queued(self) -> int:
        return self.messaging.channel("outbox").depth()


def make_shop(database_url: str, **options: Any) -> Shop:
    confirmed: list[str] = []

    @event_handler
    def confirm(event: OrderWasPlaced) -> None:
        confirmed.append(event.order_id)

    messaging = Messaging(
        handlers=[confirm], channels=[SqlChannel("outbox")], database=database_url
    )
    busway = Busway(messaging, **options)
    app = FastAPI(lifespan=busway.lifespan)
    app.add_middleware(TransactionMiddleware)
    shop = Shop(app, busway, messaging, confirmed)
    Session = Annotated[AsyncSession, Depends(busway.session)]
    Events = Annotated[OutboxEventBus, Depends(busway.gateway(OutboxEventBus))]

    @app.post("/orders/{order_id}")
    async def place(
        order_id: str, outcome: str, session: Session, events: Events, response: Response
    ) -> Any:
        await session.execute(insert(orders).values(order_id=order_id))
        await events.apublish(OrderWasPlaced(order_id))
        if outcome == "raise":
            raise RuntimeError("the route failed after its writes")
        if outcome == "http-error":
            raise HTTPException(status_code=409, detail="conflict")
        if outcome == "error-response":
            return JSONResponse({"status": "rejected"}, status_code=422)
        if outcome == "error-status":
            response.status_code = 410
        if outcome == "pause":
            shop.published.set()
            await shop.release.wait()
        return {"status": "placed"}

    return shop


@pytest.fixture
async def shop(database_url: str) -> AsyncIterator[Shop]:
    create_tables(database_url, metadata)
    made = make_shop(database_url)
    async with made.app.router.lifespan_context(made.app):
        yield made
    if not database_url.startswith("sqlite"):
        drop_tables(database_url, orders.name)


def client(app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://shop")


async def test_a_successful_route_commits_its_row_and_its_event(shop: Shop) -> None:
    async with client(shop.app) as http:
        response = await http.post("/orders/o-1", params={"outcome": "ok"})

    assert response.status_code == 200
    assert (shop.rows(), shop.queued()) == (1, 1)
    assert (await shop.messaging.arun("outbox")).handled == 1
    assert (await shop.messaging.arun("outbox")).handled == 0
    assert shop.confirmed == ["o-1"]


@pytest.mark.parametrize(
    ("outcome", "status"),
    [("raise", 500), ("http-error", 409), ("error-response", 422), ("error-status", 410)],
)
async def test_a_failing_route_keeps_neither_its_row_nor_its_event(
    shop: Shop, outcome: str, status: int
) -> None:
    async with client(shop.app) as http:
        response = await http.post("/orders/o-1", params={"outcome": outcome})

    assert response.status_code == status
    assert (shop.rows(), shop.queued()) == (0, 0)
    assert (await shop.messaging.arun("outbox")).handled == 0
    assert shop.confirmed == []


async def test_nothing_reaches_a_worker_before_the_response_commits(
    shop: Shop, database_url: str
) -> None:
    async with client(shop.app) as http:
        request = asyncio.create_task(http.post("/orders/o-1", params={"outcome": "pause"}))
        await shop.published.wait()

        assert shop.queued() == 0
        if not database_url.startswith("sqlite"):  # SQLite: the route holds the write lock
            assert (await shop.messaging.arun("outbox")).handled == 0

        shop.release.set()
        response = await request

    assert response.status_code == 200
    assert (shop.rows(), shop.queued()) == (1, 1)
    assert (await shop.messaging.arun("outbox")).handled == 1
    assert shop.confirmed == ["o-1"]


async def test_a_status_the_app_chooses_decides_what_rolls_back(database_url: str) -> None:
    create_tables(database_url, metadata)
    shop = make_shop(database_url, rollback_on=lambda status: status >= 500)
    async with shop.app.router.lifespan_context(shop.app), client(shop.app) as http:
        rejected = await http.post("/orders/o-1", params={"outcome": "error-response"})
        failed = await http.post("/orders/o-2", params={"outcome": "raise"})

        assert (rejected.status_code, failed.status_code) == (422, 500)
        assert (shop.rows(), shop.queued()) == (1, 1)  # the 422 committed, the 500 did not
        assert (await shop.messaging.arun("outbox")).handled == 1
    assert shop.confirmed == ["o-1"]


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
async def test_a_commit_that_fails_answers_500_and_keeps_nothing(database_url: str) -> None:
    """A constraint checked only at COMMIT (a deferred foreign key) fails the commit itself."""
    drop_tables(database_url, "web_fastapi_lines", orders.name)
    shop = make_shop(database_url)
    engine = shop.messaging.async_database_engine.sync_engine
    if database_url.startswith("sqlite"):
        event.listen(engine, "connect", _foreign_keys_on)
    async with shop.app.router.lifespan_context(shop.app):
        async with shop.messaging.async_database_engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
            await connection.execute(
                text(
                    "CREATE TABLE web_fastapi_lines (order_id VARCHAR(50) REFERENCES "
                    "web_fastapi_orders (order_id) DEFERRABLE INITIALLY DEFERRED)"
                )
            )

        added: list[str] = []

        @shop.app.post("/lines/{order_id}")
        async def add_line(
            order_id: str,
            session: Annotated[AsyncSession, Depends(shop.busway.session)],
            events: Annotated[OutboxEventBus, Depends(shop.busway.gateway(OutboxEventBus))],
        ) -> dict[str, str]:
            line = text("INSERT INTO web_fastapi_lines VALUES (:id)")
            await session.execute(line, {"id": order_id})
            await events.apublish(OrderWasPlaced(order_id))
            added.append(order_id)
            return {"status": "added"}

        async with client(shop.app) as http:
            response = await http.post("/lines/no-such-order")
        transport = httpx.ASGITransport(app=shop.app)  # the server sees the commit's error
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as http:
            with pytest.raises(IntegrityError) as raised:
                await http.post("/lines/no-such-order")

        assert response.status_code == 500
        assert added == ["no-such-order", "no-such-order"]  # the route itself succeeded
        assert "settle" in [entry.name for entry in raised.traceback]
        assert shop.queued() == 0
        assert (await shop.messaging.arun("outbox")).handled == 0
    drop_tables(database_url, "web_fastapi_lines", orders.name)


def _foreign_keys_on(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


@pytest.mark.parametrize("outermost", ["http-middleware", "transaction-middleware"])
@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
async def test_an_http_middleware_on_either_side_changes_nothing(
    database_url: str, outermost: str
) -> None:
    """``@app.middleware("http")`` runs the app in a task of its own, behind a stream."""
    create_tables(database_url, metadata)
    shop = make_shop(database_url)
    shop.app.user_middleware.clear()

    async def mark(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        response.headers["x-marked"] = "yes"
        return response

    if outermost == "http-middleware":
        shop.app.add_middleware(TransactionMiddleware)
        shop.app.middleware("http")(mark)
    else:
        shop.app.middleware("http")(mark)
        shop.app.add_middleware(TransactionMiddleware)
    async with shop.app.router.lifespan_context(shop.app), client(shop.app) as http:
        responses = [
            await http.post(f"/orders/o-{outcome}", params={"outcome": outcome})
            for outcome in ("ok", "error-response", "raise")
        ]

        assert [response.status_code for response in responses] == [200, 422, 500]
        assert responses[0].headers["x-marked"] == "yes"
        assert (shop.rows(), shop.queued()) == (1, 1)
        assert (await shop.messaging.arun("outbox")).handled == 1
    assert shop.confirmed == ["o-ok"]
