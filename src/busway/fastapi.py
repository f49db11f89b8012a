"""FastAPI: a lifespan for ``Messaging``, gateways as dependencies, and a request's transaction.

Needs the extra: ``pip install 'busway[fastapi]'``::

    busway = Busway(messaging)                  # or a function that builds the Messaging
    app = FastAPI(lifespan=busway.lifespan)
    app.add_middleware(TransactionMiddleware)

    @app.post("/orders/{order_id}")
    async def place(
        order_id: str,
        session: Annotated[AsyncSession, Depends(busway.session)],
        events: Annotated[OutboxEventBus, Depends(busway.gateway(OutboxEventBus))],
    ) -> dict[str, str]:
        session.add(Order(order_id=order_id))
        await events.apublish(OrderWasPlaced(order_id))   # commits with the order
        return {"status": "placed"}

The session's transaction, and every message sent to a ``SqlChannel`` of the same database
while the route runs, commit when the response starts, before the client sees it: a response
whose status ``rollback_on`` accepts (400 and above by default), or an exception, rolls them
back. A commit that fails makes the response a 500, never a success.
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final, TypeVar, cast

from busway.errors import ConfigurationError, extra_required

with extra_required("busway.fastapi", "fastapi"):
    from fastapi import FastAPI, Request
    from fastapi.dependencies.models import Dependant
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from busway.gateways import Gateway
from busway.messaging import Messaging
from busway.sql import current_transaction
from busway.sql.database import DatabaseKey
from busway.sql.transactions import Transaction

__all__ = ["Busway", "TransactionMiddleware", "is_error"]

G = TypeVar("G", bound=Gateway)

_PENDING: Final = "busway.transactions"
"""The key, in an HTTP request's ASGI scope, of the transactions to settle at its response."""


def is_error(status: int) -> bool:
    """The default ``rollback_on``: a client or server error rolls the request back."""
    return status >= 400


@dataclass(eq=False, slots=True)
class _RequestTransaction:
    """One request's session, committed or rolled back once, when its response starts."""

    session: AsyncSession
    rollback_on: Callable[[int], bool]
    outer: Transaction | None
    """What ``current_transaction`` held before the request's; restored once it settles."""
    settled: bool = False

    async def settle(self, status: int) -> None:
        if self.settled:
            return
        self.settled = True
        # Sends after the response starts (a background task, a streamed body) no longer
        # join the request's transaction: they commit on their own, as elsewhere.
        current_transaction.set(self.outer)
        if self.rollback_on(status):
            await self.session.rollback()
        else:
            await self.session.commit()

    async def abandon(self) -> None:
        self.settled = True
        current_transaction.set(self.outer)
        await self.session.rollback()


class TransactionMiddleware:
    """Commits or rolls back each request's transaction when its response starts.

    Add it once, ``app.add_middleware(TransactionMiddleware)``; routes that take
    ``Depends(busway.session)`` need it. A commit that fails raises before anything reaches
    the client, so the server answers 500.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        pending: list[_RequestTransaction] = []
        scope[_PENDING] = pending

        async def settle_then_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                while pending:
                    await pending.pop(0).settle(message["status"])
            await send(message)

        await self.app(scope, receive, settle_then_send)


class Busway:
    """busway in a FastAPI app: ``lifespan``, ``session`` and ``gateway(...)`` dependencies.

    ``messaging`` is a ``Messaging``, or a function that builds one when the app starts.
    ``sessions`` makes the request's ``AsyncSession`` (by default, on the messaging
    database, ``expire_on_commit=False``); it must reach the same database. ``setup``: create
    busway's tables and the channels' queues at start-up (by default when the messaging's
    ``auto_setup`` is on).
    """

    def __init__(
        self,
        messaging: Messaging | Callable[[], Messaging],
        *,
        sessions: Callable[[], AsyncSession] | None = None,
        rollback_on: Callable[[int], bool] = is_error,
        setup: bool | None = None,
    ) -> None:
        self._build = None if isinstance(messaging, Messaging) else messaging
        self._messaging = messaging if isinstance(messaging, Messaging) else None
        self._given_sessions = sessions
        self._sessions: Callable[[], AsyncSession] | None = None
        self._rollback_on = rollback_on
        self._setup = setup
        self._gateways: dict[type[Gateway], Callable[[], Gateway]] = {}
        self._checked: weakref.WeakSet[Engine] = weakref.WeakSet()

    @property
    def messaging(self) -> Messaging:
        if self._messaging is None:
            raise RuntimeError(
                "busway.fastapi: the Messaging is built when the app starts; give the app "
                "FastAPI(lifespan=busway.lifespan), and in tests enter it (with TestClient(app) "
                "as a context manager, or async with app.router.lifespan_context(app))"
            )
        return self._messaging

    @asynccontextmanager
    async def lifespan(self, app: object) -> AsyncIterator[None]:
        """Build (if given a function), check, set up, and at shutdown close the Messaging."""
        messaging = self._build() if self._build is not None else self.messaging
        self._messaging = messaging
        try:
            _check_routes(app, self, messaging)
            if self._setup if self._setup is not None else messaging.auto_setup:
                await messaging.asetup()
            yield
        finally:
            self._sessions = None
            await messaging.aclose()
            if self._build is not None:
                self._messaging = None

    async def session(self, request: Request) -> AsyncIterator[AsyncSession]:
        """A dependency: the request's ``AsyncSession``, in the transaction the outbox joins."""
        pending: list[_RequestTransaction] | None = request.scope.get(_PENDING)
        if pending is None:
            raise ConfigurationError(_NEEDS_MIDDLEWARE)
        messaging = self.messaging
        async with self._session_factory(messaging)() as session:
            _check_database(session, messaging, self._checked)
            request_transaction = _RequestTransaction(
                session, self._rollback_on, current_transaction.get()
            )
            async with messaging.atransaction(session):
                pending.append(request_transaction)
                try:
                    yield session
                except BaseException:
                    await request_transaction.abandon()
                    raise
                if not request_transaction.settled:
                    await request_transaction.abandon()
                    raise ConfigurationError(_ENDED_EARLY)

    def gateway(self, cls: type[G]) -> Callable[[], G]:
        """A dependency handing a route the gateway ``cls``: ``Depends(busway.gateway(cls))``.

        The same class always gives the same dependency, so tests can override it in
        ``app.dependency_overrides``.
        """
        dependency = self._gateways.get(cls)
        if dependency is None:

            def dependency() -> Gateway:
                return self.messaging.gateway(cls)

            dependency.__name__ = f"gateway_{cls.__name__}"
            self._gateways[cls] = dependency
        return cast(Callable[[], G], dependency)

    def _session_factory(self, messaging: Messaging) -> Callable[[], AsyncSession]:
        if self._sessions is None:
            self._sessions = self._given_sessions or async_sessionmaker(
                messaging.async_database_engine, expire_on_commit=False
            )
        return self._sessions


_NEEDS_MIDDLEWARE = (
    "busway.fastapi: Depends(busway.session) needs TransactionMiddleware to commit before the "
    "response is sent; add app.add_middleware(TransactionMiddleware)"
)
_ENDED_EARLY = (
    "busway.fastapi: the request's session ended before its response went through "
    "TransactionMiddleware, so its transaction was rolled back; depend on busway.session with "
    "the default scope, and add TransactionMiddleware after (outside) other middleware"
)


def _check_routes(app: object, busway: Busway, messaging: Messaging) -> None:
    """At start-up: routes that take the request's session need a database and the
    middleware."""
    if not isinstance(app, FastAPI):
        return
    if not any(
        _depends_on(getattr(route, "dependant", None), busway.session) for route in app.routes
    ):
        return
    if messaging.database is None:
        raise ConfigurationError(
            "busway.fastapi: Depends(busway.session) joins the outbox to the request's "
            "transaction, which needs Messaging(database=...)"
        )
    middleware = [cast(object, each.cls) for each in app.user_middleware]
    if TransactionMiddleware not in middleware:
        raise ConfigurationError(_NEEDS_MIDDLEWARE)


def _depends_on(dependant: Dependant | None, call: object) -> bool:
    if dependant is None:
        return False
    return any(sub.call == call or _depends_on(sub, call) for sub in dependant.dependencies)


def _check_database(
    session: AsyncSession, messaging: Messaging, checked: weakref.WeakSet[Engine]
) -> None:
    """The outbox commits with the session only on the messaging database."""
    engine: Engine = session.get_bind().engine
    if engine in checked:
        return
    expected = messaging.async_database_engine.url
    if DatabaseKey.of(engine.url) != DatabaseKey.of(expected):
        raise ConfigurationError(
            f"busway.fastapi: the request's session is on "
            f"{engine.url.render_as_string(hide_password=True)}, not on the messaging database "
            f"{expected.render_as_string(hide_password=True)}; give Busway(sessions=...) a "
            "session maker on the database of Messaging(database=...)"
        )
    checked.add(engine)
