"""Publishing through the outbox from FastAPI routes, with busway.fastapi.

BUSWAY_DATABASE=postgresql://postgres@127.0.0.1/test uvicorn examples.fastapi_app:app
busway run outbox --app examples.fastapi_app:messaging      # the worker, in another shell
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import String
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from busway import EventBus, Messaging, SqlChannel, asynchronous, event_handler
from busway.fastapi import Busway, TransactionMiddleware


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "web_orders"
    order_id: Mapped[str] = mapped_column(String(50), primary_key=True)


@dataclass
class OrderWasPlaced:
    order_id: str


@asynchronous("outbox")
class OutboxEventBus(EventBus):
    """Events published here commit with the request's transaction."""


confirmed: list[str] = []


@event_handler
def confirm(event: OrderWasPlaced) -> None:
    confirmed.append(event.order_id)


messaging = Messaging(
    handlers=[confirm],
    channels=[SqlChannel("outbox")],
    database=os.environ.get("BUSWAY_DATABASE", "sqlite:///web.db"),
)
busway = Busway(messaging)
app = FastAPI(lifespan=busway.lifespan)  # sets busway up at start, closes it at shutdown
app.add_middleware(TransactionMiddleware)  # commits each request before its response

Session = Annotated[AsyncSession, Depends(busway.session)]
Events = Annotated[OutboxEventBus, Depends(busway.gateway(OutboxEventBus))]


@app.post("/orders/{order_id}")
async def place(order_id: str, session: Session, events: Events) -> dict[str, str]:
    session.add(Order(order_id=order_id))
    await events.apublish(OrderWasPlaced(order_id))  # commits with the order, or not at all
    if order_id.startswith("bad"):
        raise HTTPException(status_code=422, detail="rejected")  # the order and event roll back
    return {"status": "placed"}
