"""The transactional outbox: a message sent in a transaction is delivered if and only if it
commits, on SQLite, PostgreSQL and MariaDB, through the sync and the asyncio front doors."""

import threading
import time
from dataclasses import dataclass

import pytest
from sqlalchemy import Column, String, Table, create_engine, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from busway import (
    BuswayError,
    CommandBus,
    EventBus,
    SqlChannel,
    asynchronous,
    command_handler,
    event_handler,
)
from dbsupport import async_url, create_tables, sync_url


@dataclass
class PlaceOrder:
    order_id: str
    fail: bool = False


@dataclass
class ReserveStock:
    order_id: str


@dataclass
class OrderWasPlaced:
    order_id: str


@asynchronous("outbox")
class OutboxEventBus(EventBus):
    """Events published here commit with the surrounding transaction."""


class Refused(Exception):
    pass


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "test_orders"
    id: Mapped[str] = mapped_column(String(50), primary_key=True)


metadata = Base.metadata
orders = Order.__table__
stock = Table("test_stock", metadata, Column("order_id", String(50), primary_key=True))


class Shop:
    """Places orders through the injected Session and publishes through the outbox."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.saw_order_row: list[bool] = []

    @command_handler
    def place_order(self, command: PlaceOrder, events: OutboxEventBus, session: Session) -> None:
        session.add(Order(id=command.order_id))
        session.flush()
        events.publish(OrderWasPlaced(command.order_id))
        if command.fail:
            raise Refused(command.order_id)

    @command_handler
    def place_and_reserve(
        self, command: ReserveStock, commands: CommandBus, session: Session
    ) -> None:
        session.execute(insert(stock).values(order_id=command.order_id))
        commands.send(PlaceOrder(command.order_id, fail=command.order_id.startswith("bad")))

    @event_handler
    def confirm(self, event: OrderWasPlaced, session: Session) -> None:
        row = session.get(Order, event.order_id)
        self.saw_order_row.append(row is not None)
        self.seen.append(event.order_id)


class AsyncShop:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.saw_order_row: list[bool] = []

    @command_handler
    async def place_order(
        self, command: PlaceOrder, events: OutboxEventBus, session: AsyncSession
    ) -> None:
        session.add(Order(id=command.order_id))
        await session.flush()
        await events.apublish(OrderWasPlaced(command.order_id))
        if command.fail:
            raise Refused(command.order_id)

    @event_handler
    async def confirm(self, event: OrderWasPlaced, session: AsyncSession) -> None:
        row = await session.get(Order, event.order_id)
        self.saw_order_row.append(row is not None)
        self.seen.append(event.order_id)


@pytest.fixture
def tables(database_url):
    create_tables(database_url, metadata)


def order_ids(url):
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            return connection.execute(select(orders.c.id).order_by(orders.c.id)).scalars().all()
    finally:
        engine.dispose()


def committed_messages(url):
    """Rows on busway_messages, as another connection sees them (without taking a lock)."""
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            return connection.execute(
                select(func.count()).select_from(SqlChannel("outbox").table)
            ).scalar_one()
    finally:
        engine.dispose()


def outbox(make_messaging, handler):
    return make_messaging([handler], [SqlChannel("outbox")])


def in_thread(function, *args):
    """Run ``function`` on another thread (so in a fresh context, on its own connections)."""
    outcome = {}

    def target():
        try:
            outcome["result"] = function(*args)
        except BaseException as error:  # pragma: no cover - reported by the test
            outcome["error"] = error

    thread = threading.Thread(target=target)
    thread.start()
    return thread, outcome


# -- inside handlers ---------------------------------------------------------------------------


def test_commit_delivers(make_messaging, database_url, tables):
    shop = Shop()
    messaging = outbox(make_messaging, shop)

    messaging.command_bus.send(PlaceOrder("o-1"))

    assert order_ids(database_url) == ["o-1"]
    assert shop.seen == []  # queued, not handled yet
    assert messaging.channel("outbox").depth() == 1
    result = messaging.run("outbox")
    assert result.handled == 1
    assert result.failed == 0
    assert shop.seen == ["o-1"]
    assert shop.saw_order_row == [True]
    assert messaging.channel("outbox").depth() == 0


def test_rollback_never_delivers(make_messaging, database_url, tables):
    shop = Shop()
    messaging = outbox(make_messaging, shop)

    with pytest.raises(Refused):
        messaging.command_bus.send(PlaceOrder("o-2", fail=True))

    assert order_ids(database_url) == []
    assert committed_messages(database_url) == 0
    assert messaging.run("outbox").handled == 0
    assert shop.seen == []
    assert messaging.dead_letters.list() == []


def test_nested_send_joins_the_open_transaction(make_messaging, database_url, tables):
    shop = Shop()
    messaging = outbox(make_messaging, shop)

    messaging.command_bus.send(ReserveStock("good"))
    with pytest.raises(Refused):
        messaging.command_bus.send(ReserveStock("bad"))

    # The inner command's failure undid the outer handler's row and the event too.
    assert order_ids(database_url) == ["good"]
    engine = create_engine(sync_url(database_url))
    with engine.connect() as connection:
        assert connection.execute(select(stock.c.order_id)).scalars().all() == ["good"]
    engine.dispose()
    assert messaging.run("outbox").handled == 1
    assert shop.seen == ["good"]


# -- visibility --------------------------------------------------------------------------------


def test_message_is_invisible_to_workers_until_commit(make_messaging, database_url, tables):
    sender = outbox(make_messaging, Shop())
    shop = Shop()
    consumer = outbox(make_messaging, shop)  # its own engine: other connections
    sqlite = database_url.startswith("sqlite")

    with sender.transaction() as session:
        session.add(Order(id="o-3"))
        sender.gateway(OutboxEventBus).publish(OrderWasPlaced("o-3"))
        session.flush()
        assert committed_messages(database_url) == 0
        worker, outcome = in_thread(consumer.run, "outbox")
        if not sqlite:
            worker.join(30)
            assert not worker.is_alive()
            assert outcome["result"].handled == 0
            assert consumer.channel("outbox").depth() == 0
            assert shop.seen == []
        # On SQLite the worker waits for the write lock this transaction holds.

    if not sqlite:
        assert committed_messages(database_url) == 1
        worker, outcome = in_thread(consumer.run, "outbox")
    worker.join(30)
    assert not worker.is_alive()
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"].handled == 1
    assert shop.seen == ["o-3"]
    # Whenever the event was handled, the order committed with it was already there.
    assert shop.saw_order_row == [True]


# -- outside handlers --------------------------------------------------------------------------


def test_script_joins_its_own_session(make_messaging, database_url, tables):
    shop = Shop()
    messaging = outbox(make_messaging, shop)
    events = messaging.gateway(OutboxEventBus)
    engine = create_engine(sync_url(database_url))

    with Session(engine) as session, messaging.transaction(session):
        session.add(Order(id="o-4"))
        events.publish(OrderWasPlaced("o-4"))
        assert committed_messages(database_url) == 0
        session.commit()

    with Session(engine) as session, messaging.transaction(session):
        session.add(Order(id="o-5"))
        events.publish(OrderWasPlaced("o-5"))
        session.rollback()

    with pytest.raises(Refused), Session(engine) as session, messaging.transaction(session):
        session.add(Order(id="o-6"))
        events.publish(OrderWasPlaced("o-6"))
        raise Refused("o-6")

    engine.dispose()
    assert order_ids(database_url) == ["o-4"]
    assert committed_messages(database_url) == 1
    assert messaging.run("outbox").handled == 1
    assert shop.seen == ["o-4"]


def test_transaction_without_a_session_commits_at_the_end_of_the_block(
    make_messaging, database_url, tables
):
    shop = Shop()
    messaging = outbox(make_messaging, shop)
    events = messaging.gateway(OutboxEventBus)

    with messaging.transaction() as session:
        session.add(Order(id="o-7"))
        events.publish(OrderWasPlaced("o-7"))
    with pytest.raises(Refused), messaging.transaction() as session:
        session.add(Order(id="o-8"))
        events.publish(OrderWasPlaced("o-8"))
        raise Refused("o-8")

    assert order_ids(database_url) == ["o-7"]
    assert messaging.run("outbox").handled == 1
    assert shop.seen == ["o-7"]


def test_publishing_with_no_transaction_open_commits_on_its_own(
    make_messaging, database_url, tables
):
    shop = Shop()
    messaging = outbox(make_messaging, shop)
    engine = create_engine(sync_url(database_url))
    with Session(engine) as session:
        session.add(Order(id="o-9"))
        session.commit()
    engine.dispose()

    messaging.gateway(OutboxEventBus).publish(OrderWasPlaced("o-9"))

    assert committed_messages(database_url) == 1
    assert messaging.run("outbox").handled == 1
    assert shop.seen == ["o-9"]


# -- asyncio -----------------------------------------------------------------------------------


async def test_async_handlers_commit_and_roll_back(make_messaging, database_url, tables):
    shop = AsyncShop()
    messaging = outbox(make_messaging, shop)

    await messaging.command_bus.asend(PlaceOrder("a-1"))
    with pytest.raises(Refused):
        await messaging.command_bus.asend(PlaceOrder("a-2", fail=True))

    assert order_ids(database_url) == ["a-1"]
    assert committed_messages(database_url) == 1
    result = await messaging.arun("outbox")
    assert result.handled == 1
    assert shop.seen == ["a-1"]
    assert shop.saw_order_row == [True]
    assert committed_messages(database_url) == 0


async def test_async_session_outside_handlers(make_messaging, database_url, tables):
    shop = AsyncShop()
    messaging = outbox(make_messaging, shop)
    events = messaging.gateway(OutboxEventBus)
    engine = create_async_engine(async_url(database_url))

    async with AsyncSession(engine) as session, messaging.atransaction(session):
        session.add(Order(id="a-3"))
        await events.apublish(OrderWasPlaced("a-3"))
        assert committed_messages(database_url) == 0
        await session.commit()
    async with AsyncSession(engine) as session, messaging.atransaction(session):
        session.add(Order(id="a-4"))
        await events.apublish(OrderWasPlaced("a-4"))
        await session.rollback()
    async with messaging.atransaction() as session:
        session.add(Order(id="a-5"))
        await events.apublish(OrderWasPlaced("a-5"))
    await engine.dispose()

    assert order_ids(database_url) == ["a-3", "a-5"]
    assert committed_messages(database_url) == 2
    assert (await messaging.arun("outbox")).handled == 2
    assert shop.seen == ["a-3", "a-5"]
    assert shop.saw_order_row == [True, True]


class SyncPublisher:
    @command_handler
    async def place_order(
        self, command: PlaceOrder, events: OutboxEventBus, session: AsyncSession
    ) -> None:
        session.add(Order(id=command.order_id))
        events.publish(OrderWasPlaced(command.order_id))  # not awaited: cannot join


async def test_publishing_without_await_in_an_asyncio_transaction_is_refused(
    make_messaging, database_url, tables
):
    messaging = outbox(make_messaging, SyncPublisher())

    with pytest.raises(BuswayError, match="apublish"):
        await messaging.command_bus.asend(PlaceOrder("s-1"))

    assert order_ids(database_url) == []
    assert committed_messages(database_url) == 0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_local_worker_wakes_when_the_owner_of_a_joined_session_commits(
    make_messaging, database_url, tables
):
    """SQLite has no NOTIFY: a worker of this process is woken when a message commits, even
    when the commit is the application's own, inside the block or after it; and at once
    when it is told to stop."""
    shop = Shop()
    messaging = make_messaging([shop], [SqlChannel("outbox", poll_interval=600)])
    events = messaging.gateway(OutboxEventBus)
    engine = create_engine(sync_url(database_url))
    worker = messaging.worker("outbox", until_empty=False, poll_interval=600)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        with Session(engine) as session:
            with messaging.transaction(session):
                events.publish(OrderWasPlaced("inside"))
                session.commit()
            with messaging.transaction(session):
                events.publish(OrderWasPlaced("after"))
            session.commit()
        deadline = time.monotonic() + 30  # far less than the 600 s poll
        while len(shop.seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        worker.stop()
        thread.join(30)
        engine.dispose()

    assert shop.seen == ["inside", "after"]
    assert not thread.is_alive()
