"""Flask: ``Busway(app, messaging)``: each request in one transaction with the outbox, and
``flask busway ...``.

Needs the extra: ``pip install 'busway[flask]'``::

    db = SQLAlchemy(app)                         # Flask-SQLAlchemy, or none at all
    busway = Busway(app, messaging)

    @app.post("/orders/<order_id>")
    def place(order_id: str) -> dict[str, str]:
        db.session.add(Order(order_id=order_id))
        busway.gateway(OutboxEventBus).publish(OrderWasPlaced(order_id))  # commits with it
        return {"status": "placed"}

A request to a view runs in one transaction: Flask-SQLAlchemy's ``db.session`` when the app
has Flask-SQLAlchemy, else the session ``session=`` makes (``busway.session`` in a view),
and every message sent to a ``SqlChannel`` of the same database joins it. After the view,
before the response leaves, it commits, or rolls back when ``rollback_on`` accepts the
response's status (400 and above by default: an error, and any exception, which Flask turns
into one). A commit that fails makes the response a 500, never a success.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable, Collection
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Final, TypeVar, cast

from busway.errors import ConfigurationError, extra_required

with extra_required("busway.flask", "flask"):
    import click
    from flask import Flask, Response, current_app, g, request
    from flask.cli import AppGroup, with_appcontext
    from werkzeug.local import LocalProxy

from sqlalchemy import Engine
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from busway.cli import cli as busway_cli
from busway.gateways import Gateway
from busway.messaging import Messaging
from busway.sql import current_transaction
from busway.sql.database import DatabaseKey
from busway.sql.transactions import Transaction

__all__ = ["Busway", "current_messaging", "is_error"]

G = TypeVar("G", bound=Gateway)

_EXTENSION: Final = "busway"
_IN_HAND: Final = "_busway_transaction"


def is_error(status: int) -> bool:
    """The default ``rollback_on``: a client or server error rolls the request back."""
    return status >= 400


@dataclass(eq=False, slots=True)
class _RequestTransaction:
    """One request's session and the transaction busway joined, settled once."""

    session: Session
    outer: Transaction | None
    """What ``current_transaction`` held before the request's; restored once it settles."""
    exits: ExitStack = field(default_factory=ExitStack)
    settled: bool = False
    committed: bool = False

    def settle(self, rollback: bool) -> None:
        if self.settled:
            return
        self.settled = True
        # What is sent after this (a teardown callback) no longer joins the request's
        # transaction: it commits on its own, as elsewhere.
        current_transaction.set(self.outer)
        if rollback:
            self.session.rollback()
        else:
            self.session.commit()
            self.committed = True

    def end(self) -> None:
        try:
            self.settled = True
            if not self.committed:  # a failed commit too: SQLite keeps its transaction open
                self.session.rollback()
        finally:
            self.exits.close()


class _AppState:
    """What ``init_app`` gave one app: its Messaging, its sessions, its hooks."""

    def __init__(
        self,
        messaging: Messaging,
        sessions: Callable[[], Session] | None,
        owned: bool,
        rollback_on: Callable[[int], bool],
        skip_endpoints: Collection[str],
    ) -> None:
        self.messaging = messaging
        self.sessions = sessions
        self.owned = owned
        self.rollback_on = rollback_on
        self.skip_endpoints = frozenset(skip_endpoints)
        self._checked: weakref.WeakSet[Engine] = weakref.WeakSet()

    def begin(self) -> None:
        if self.sessions is None:
            return
        if request.endpoint is None or request.endpoint in self.skip_endpoints:
            return  # no view runs (a 404), or one that needs no transaction (static files)
        session = self.sessions()
        in_hand = _RequestTransaction(session, current_transaction.get())
        if self.owned:
            in_hand.exits.callback(session.close)
        try:
            self.check_engine(session.get_bind().engine)
            in_hand.exits.enter_context(self.messaging.transaction(session))
        except BaseException:
            in_hand.exits.close()
            raise
        setattr(g, _IN_HAND, in_hand)

    def finish(self, response: Response) -> Response:
        in_hand: _RequestTransaction | None = g.get(_IN_HAND)
        if in_hand is not None:
            in_hand.settle(self.rollback_on(response.status_code))
        return response

    def end(self, _error: BaseException | None) -> None:
        in_hand: _RequestTransaction | None = g.pop(_IN_HAND, None)
        if in_hand is not None:
            in_hand.end()

    def check_engine(self, engine: Engine) -> None:
        """The outbox commits with the session only on the messaging database."""
        if engine in self._checked:
            return
        expected = self.messaging.database_engine.url
        if DatabaseKey.of(engine.url) != DatabaseKey.of(expected):
            raise ConfigurationError(
                "busway.flask: the request's session is on "
                f"{engine.url.render_as_string(hide_password=True)}, not on the messaging "
                f"database {expected.render_as_string(hide_password=True)}; give "
                "Messaging(database=...) the same URL (or db.engine), so that the outbox "
                "commits with the session"
            )
        self._checked.add(engine)


class Busway:
    """busway in a Flask app: ``Busway(app, messaging)``, or ``init_app`` in an app factory.

    ``session``: what makes the request's ``Session``: a ``scoped_session`` (its owner
    removes it) or a ``sessionmaker`` (busway closes each session after the request). By
    default Flask-SQLAlchemy's ``db.session`` when the app has it (call ``db.init_app(app)``
    first), else sessions on the messaging database. ``skip_endpoints`` run without a
    transaction.
    """

    def __init__(
        self,
        app: Flask | None = None,
        messaging: Messaging | None = None,
        *,
        session: Callable[[], Session] | None = None,
        rollback_on: Callable[[int], bool] = is_error,
        skip_endpoints: Collection[str] = ("static",),
    ) -> None:
        self._messaging = messaging
        self._session = session
        self._rollback_on = rollback_on
        self._skip_endpoints = skip_endpoints
        if app is not None:
            self.init_app(app)

    def init_app(
        self,
        app: Flask,
        messaging: Messaging | None = None,
        *,
        session: Callable[[], Session] | None = None,
    ) -> None:
        messaging = messaging or self._messaging
        if messaging is None:
            raise ConfigurationError(
                "busway.flask: init_app needs the app's Messaging; pass Busway(app, messaging) "
                "or busway.init_app(app, messaging)"
            )
        sessions, owned = _sessions_for(app, messaging, session or self._session)
        state = _AppState(messaging, sessions, owned, self._rollback_on, self._skip_endpoints)
        flask_sqlalchemy = app.extensions.get("sqlalchemy")
        if flask_sqlalchemy is not None and sessions is flask_sqlalchemy.session:
            with app.app_context():  # at start-up, not at the first request
                state.check_engine(flask_sqlalchemy.engine)
        app.extensions[_EXTENSION] = state
        app.before_request(state.begin)
        app.after_request(state.finish)
        app.teardown_request(state.end)
        app.cli.add_command(cli)

    @property
    def messaging(self) -> Messaging:
        """The current app's Messaging."""
        return _state().messaging

    @property
    def session(self) -> Session:
        """The current request's session, in the transaction the outbox joins."""
        in_hand: _RequestTransaction | None = g.get(_IN_HAND)
        if in_hand is None:
            raise RuntimeError(
                "busway.flask: busway.session is the session of a request to a view; use it "
                "inside one (tests: within app.test_request_context() after "
                "app.preprocess_request())"
            )
        return in_hand.session

    def gateway(self, cls: type[G]) -> G:
        """The current app's gateway ``cls``."""
        return _state().messaging.gateway(cls)


def _sessions_for(
    app: Flask, messaging: Messaging, session: Callable[[], Session] | None
) -> tuple[Callable[[], Session] | None, bool]:
    """What makes each request's session (None: requests need no transaction, the messaging
    has no database), and whether busway closes it after the request."""
    if messaging.database is None:
        if session is not None:
            raise ConfigurationError(
                "busway.flask: Busway(session=...) joins the outbox to the session's "
                "transaction, which needs Messaging(database=...) on the same database"
            )
        return None, False
    if session is None:
        flask_sqlalchemy = app.extensions.get("sqlalchemy")
        if flask_sqlalchemy is not None:
            return flask_sqlalchemy.session, False
        return sessionmaker(messaging.database_engine), True
    return session, not isinstance(session, scoped_session)


def _state() -> _AppState:
    state = current_app.extensions.get(_EXTENSION)
    if state is None:
        raise RuntimeError(
            f"busway.flask: the app {current_app.name!r} has no busway; call "
            "Busway(app, messaging) or busway.init_app(app, messaging) where it is made"
        )
    return cast(_AppState, state)


current_messaging: Messaging = cast(Messaging, LocalProxy(lambda: _state().messaging))
"""The current app's Messaging (in a request, a CLI command, or ``app.app_context()``)."""


# -- flask busway ... ------------------------------------------------------------------------

_APP_SPEC: Final = f"{__name__}:current_messaging"


def _on_current_app(command: click.Command) -> click.Command:
    """``command`` of the ``busway`` CLI, taking the current app's Messaging, not ``--app``."""
    bound = copy.copy(command)
    bound.params = [
        click.Option(["--app"], hidden=True, default=_APP_SPEC) if param.name == "app" else param
        for param in command.params
    ]
    if isinstance(command, click.Group) and isinstance(bound, click.Group):
        bound.commands = {name: _on_current_app(sub) for name, sub in command.commands.items()}
    return bound


def _flask_cli() -> click.Group:
    @click.group("busway", cls=AppGroup)
    @with_appcontext
    def busway() -> None:
        """busway on this app's Messaging: run workers, set up channels, replay dead letters."""

    for command in busway_cli.commands.values():
        busway.add_command(_on_current_app(command))
    return busway


cli = _flask_cli()
"""``flask busway ...``: added to the app's commands by ``init_app``."""
