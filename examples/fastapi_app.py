"""Publishing through the outbox from a FastAPI view that owns its AsyncSession.

BUSWAY_DATABASE=postgresql://postgres@127.0.0.1/test uvicorn examples.fastapi_app:app
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import String
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from busway import EventBus, Messaging, SqlChannel, asynchronous, event_handler


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
    """Events published here commit with the view's transaction."""


confirmed: list[str] = []


@event_handler
def confirm(event: OrderWasPlaced) -> None:
    confirmed.append(event.order_id)


messaging = Messaging(
    handlers=[confirm],
    channels=[SqlChannel("outbox")],
    database=os.environ.get("BUSWAY_DATABASE", "sqlite:///web.db"),
)
sessions = async_sessionmaker(messaging.async_database_engine, expire_on_commit=False)
app = FastAPI()


async def get_session() -> AsyncIterator[AsyncSession]:
    async with sessions() as session:
        yield session


SessionDependency = Annotated[AsyncSession, Depends(get_session)]


@app.post("/orders/{order_id}")
async def place(order_id: str, session: SessionDependency) -> dict[str, str]:
    async with messaging.atransaction(session):
        session.add(Order(order_id=order_id))
        await messaging.gateway(OutboxEventBus).apublish(OrderWasPlaced(order_id))
        if order_id.startswith("bad"):
            await session.rollback()  # the event goes with the order
            raise HTTPException(status_code=422, detail="rejected")
        await session.commit()  # the order and its event commit together
    return {"status": "placed"}
