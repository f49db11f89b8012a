"""A sync (``def``) route that publishes with the sync API inside the request's asyncio
transaction is refused: the message would otherwise commit on its own, whatever the route's
fate."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from fastapi import Depends, FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from busway import BuswayError, EventBus, Messaging, SqlChannel, asynchronous, event_handler
from busway.fastapi import Busway, TransactionMiddleware


@dataclass
class Noted:
    text: str


@asynchronous("outbox")
class Notes(EventBus):
    """Committed with the request's transaction."""


@event_handler
def note(event: Noted) -> None:
    pass


async def test_a_sync_publish_in_a_sync_route_is_refused_and_nothing_is_queued(
    database_url: str,
) -> None:
    messaging = Messaging(handlers=[note], channels=[SqlChannel("outbox")], database=database_url)
    busway = Busway(messaging)
    app = FastAPI(lifespan=busway.lifespan)
    app.add_middleware(TransactionMiddleware)
    request_session = Depends(busway.session)

    @app.post("/notes")
    def write(session: AsyncSession = request_session) -> dict[str, str]:
        try:
            messaging.gateway(Notes).publish(Noted("would commit alone"))
        except BuswayError as refused:
            return {"status": "refused", "why": str(refused)}
        return {"status": "noted"}

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post("/notes")
        assert response.json()["status"] == "refused"
        assert "outside the asyncio transaction" in response.json()["why"]
        assert messaging.channel("outbox").depth() == 0
