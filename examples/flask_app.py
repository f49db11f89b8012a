"""Publishing through the outbox from Flask views, with busway.flask and Flask-SQLAlchemy.

BUSWAY_DATABASE=postgresql+psycopg://postgres@127.0.0.1/test flask --app examples.flask_app run
flask --app examples.flask_app busway run outbox      # the worker, in another shell
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from flask import Flask, abort
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from busway import EventBus, Messaging, SqlChannel, asynchronous, event_handler
from busway.flask import Busway


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "web_flask_example_orders"
    order_id: Mapped[str] = mapped_column(String(50), primary_key=True)


class Confirmation(Base):
    __tablename__ = "web_flask_example_confirmations"
    order_id: Mapped[str] = mapped_column(String(50), primary_key=True)


@dataclass
class OrderWasPlaced:
    order_id: str


@asynchronous("outbox")
class OutboxEventBus(EventBus):
    """Events published here commit with the request's transaction."""


confirmed: list[str] = []


@event_handler
def confirm(event: OrderWasPlaced, session: Session) -> None:
    """Run by the worker: its session is the worker's transaction, not db.session."""
    session.add(Confirmation(order_id=event.order_id))  # commits with the message's claim
    confirmed.append(event.order_id)


app = Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = os.environ.get(
    "BUSWAY_DATABASE", f"sqlite:///{Path.cwd() / 'web.db'}"
)
db = SQLAlchemy(app, model_class=Base)
with app.app_context():  # one engine, one pool: busway writes where db.session does
    messaging = Messaging(handlers=[confirm], channels=[SqlChannel("outbox")], database=db.engine)
busway = Busway(app, messaging)  # each request to a view: one transaction, with the outbox


@app.post("/orders/<order_id>")
def place(order_id: str) -> dict[str, str]:
    db.session.add(Order(order_id=order_id))
    busway.gateway(OutboxEventBus).publish(OrderWasPlaced(order_id))  # commits with the order
    if order_id.startswith("bad"):
        abort(422)  # the order and its event roll back
    return {"status": "placed"}
