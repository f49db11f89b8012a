"""busway.flask: a view's business row and its outbox message commit together or not at all.

Each test runs against a SQLite file, PostgreSQL and MariaDB (``database_url``), through
Flask's test client, once with Flask-SQLAlchemy's ``db.session`` and once with the plain
SQLAlchemy session busway makes (``busway.session``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask import Flask, abort, request
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Column, Engine, MetaData, String, Table, event, func, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from busway import EventBus, Messaging, SqlChannel, asynchronous, event_handler
from busway.flask import Busway
from dbsupport import create_tables, drop_tables, sync_url

metadata = MetaData()
orders = Table("web_flask_orders", metadata, Column("order_id", String(50), primary_key=True))


@dataclass
class OrderWasPlaced:
    order_id: str


@asynchronous("outbox")
class OutboxEventBus(EventBus):
    """Events published here commit with the request."""


@dataclass
class Shop:
    app: Flask
    busway: Busway
    messaging: Messaging
    engine: Callable[[], Engine]
    """The engine of the view's session."""
    confirmed: list[str]
    published: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def rows(self) -> int:
        with self.messaging.database_engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(orders)).scalar_one())

    def queued(self) -> int:
        return self.messaging.channel("outbox").depth()


def make_shop(database_url: str, flavor: str, **options: Any) -> Shop:
    confirmed: list[str] = []

    @event_handler
    def confirm(event: OrderWasPlaced) -> None:
        confirmed.append(event.order_id)

    messaging = Messaging(
        handlers=[confirm], channels=[SqlChannel("outbox")], database=database_url
    )
    app = Flask(__name__)
    current_session: Callable[[], Session]
    if flavor == "flask-sqlalchemy":
        app.config["SQLALCHEMY_DATABASE_URI"] = sync_url(database_url).render_as_string(
            hide_password=False
        )
        db = SQLAlchemy(app)
        busway = Busway(app, messaging, **options)

        def current_session() -> Session:
            return db.session()

        def engine() -> Engine:
            with app.app_context():
                return db.engine

    else:
        busway = Busway(app, messaging, **options)

        def current_session() -> Session:
            return busway.session

        def engine() -> Engine:
            return messaging.database_engine

    shop = Shop(app, busway, messaging, engine, confirmed)

    @app.post("/orders/<order_id>")
    def place(order_id: str) -> Any:
        current_session().execute(insert(orders).values(order_id=order_id))
        busway.gateway(OutboxEventBus).publish(OrderWasPlaced(order_id))
        outcome = request.args["outcome"]
        if outcome == "raise":
            raise RuntimeError("the view failed after its writes")
        if outcome == "http-error":
            abort(409)
        if outcome == "error-response":
            return {"status": "rejected"}, 422
        if outcome == "pause":
            shop.published.set()
            assert shop.release.wait(timeout=60)
        return {"status": "placed"}

    @app.post("/lines/<order_id>")
    def add_line(order_id: str) -> Any:
        current_session().execute(
            text("INSERT INTO web_flask_lines VALUES (:id)"), {"id": order_id}
        )
        busway.gateway(OutboxEventBus).publish(OrderWasPlaced(order_id))
        return {"status": "added"}

    return shop


FLAVORS = ["flask-sqlalchemy", "plain-session"]


@pytest.fixture(params=FLAVORS)
def shop(database_url: str, request: pytest.FixtureRequest) -> Iterator[Shop]:
    create_tables(database_url, metadata)
    made = make_shop(database_url, request.param)
    yield made
    made.messaging.close()
    if not database_url.startswith("sqlite"):
        drop_tables(database_url, orders.name)


def test_a_successful_view_commits_its_row_and_its_event(shop: Shop) -> None:
    response = shop.app.test_client().post("/orders/o-1", query_string={"outcome": "ok"})

    assert response.status_code == 200
    assert (shop.rows(), shop.queued()) == (1, 1)
    assert shop.messaging.run("outbox").handled == 1
    assert shop.messaging.run("outbox").handled == 0
    assert shop.confirmed == ["o-1"]


@pytest.mark.parametrize(
    ("outcome", "status"),
    [("raise", 500), ("http-error", 409), ("error-response", 422)],
)
def test_a_failing_view_keeps_neither_its_row_nor_its_event(
    shop: Shop, outcome: str, status: int
) -> None:
    response = shop.app.test_client().post("/orders/o-1", query_string={"outcome": outcome})

    assert response.status_code == status
    assert (shop.rows(), shop.queued()) == (0, 0)
    assert shop.messaging.run("outbox").handled == 0
    assert shop.confirmed == []


def test_nothing_reaches_a_worker_before_the_response_commits(
    shop: Shop, database_url: str
) -> None:
    with ThreadPoolExecutor(1) as pool:
        posted = pool.submit(
            shop.app.test_client().post, "/orders/o-1", query_string={"outcome": "pause"}
        )
        assert shop.published.wait(timeout=60)

        assert shop.queued() == 0
        if not database_url.startswith("sqlite"):  # SQLite: the view holds the write lock
            assert shop.messaging.run("outbox").handled == 0

        shop.release.set()
        response = posted.result(timeout=60)

    assert response.status_code == 200
    assert (shop.rows(), shop.queued()) == (1, 1)
    assert shop.messaging.run("outbox").handled == 1
    assert shop.confirmed == ["o-1"]


@pytest.mark.parametrize("flavor", FLAVORS)
def test_a_status_the_app_chooses_decides_what_rolls_back(database_url: str, flavor: str) -> None:
    create_tables(database_url, metadata)
    shop = make_shop(database_url, flavor, rollback_on=lambda status: status >= 500)
    http = shop.app.test_client()

    rejected = http.post("/orders/o-1", query_string={"outcome": "error-response"})
    failed = http.post("/orders/o-2", query_string={"outcome": "raise"})

    assert (rejected.status_code, failed.status_code) == (422, 500)
    assert (shop.rows(), shop.queued()) == (1, 1)  # the 422 committed, the 500 did not
    assert shop.messaging.run("outbox").handled == 1
    assert shop.confirmed == ["o-1"]
    shop.messaging.close()


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_commit_that_fails_answers_500_and_keeps_nothing(database_url: str, flavor: str) -> None:
    """A constraint checked only at COMMIT (a deferred foreign key) fails the commit itself."""
    drop_tables(database_url, "web_flask_lines", orders.name)
    shop = make_shop(database_url, flavor)
    engine = shop.engine()
    if database_url.startswith("sqlite"):
        event.listen(engine, "connect", _foreign_keys_on)
    with engine.begin() as connection:
        metadata.create_all(connection)
        connection.execute(
            text(
                "CREATE TABLE web_flask_lines (order_id VARCHAR(50) REFERENCES "
                "web_flask_orders (order_id) DEFERRABLE INITIALLY DEFERRED)"
            )
        )

    response = shop.app.test_client().post("/lines/no-such-order")
    shop.app.testing = True  # the error reaches the test, as it reaches the server's log
    with pytest.raises(IntegrityError) as raised:
        shop.app.test_client().post("/lines/no-such-order")

    assert response.status_code == 500
    assert "settle" in [entry.name for entry in raised.traceback]
    assert shop.queued() == 0
    assert shop.messaging.run("outbox").handled == 0
    shop.messaging.close()
    drop_tables(database_url, "web_flask_lines", orders.name)


def _foreign_keys_on(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
