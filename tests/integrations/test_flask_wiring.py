"""busway.flask's wiring: ``init_app``, ``flask busway ...``, and the mistakes it names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker

from busway import (
    ConfigurationError,
    EventBus,
    InMemoryChannel,
    Messaging,
    SqlChannel,
    asynchronous,
    event_handler,
)
from busway.flask import Busway, current_messaging
from busway.testing import record, run_until_idle


@dataclass
class PageWasSeen:
    path: str


@asynchronous("outbox")
class OutboxEventBus(EventBus):
    """Events published here commit with the request."""


@asynchronous("later")
class LaterEventBus(EventBus):
    """Events published here are handled by a worker."""


seen: list[str] = []


@event_handler
def note(event: PageWasSeen) -> None:
    seen.append(event.path)


def sqlite_messaging(tmp_path: Path, name: str = "web.db") -> Messaging:
    return Messaging(
        handlers=[note], channels=[SqlChannel("outbox")], database=f"sqlite:///{tmp_path / name}"
    )


def test_an_app_factory_gives_each_app_its_messaging(tmp_path: Path) -> None:
    busway = Busway()
    apps = [Flask("one"), Flask("two")]
    messagings = [sqlite_messaging(tmp_path, "one.db"), sqlite_messaging(tmp_path, "two.db")]
    for app, messaging in zip(apps, messagings, strict=True):
        busway.init_app(app, messaging)

    for app, messaging in zip(apps, messagings, strict=True):
        with app.app_context():
            assert busway.messaging is messaging
            assert isinstance(current_messaging, Messaging)
            assert current_messaging.channel("outbox") is messaging.channel("outbox")
        messaging.close()


def test_init_app_without_a_messaging_says_what_to_pass() -> None:
    with pytest.raises(ConfigurationError, match=r"Busway\(app, messaging\)"):
        Busway(Flask("shop"))


def test_busway_session_outside_a_request_says_where_it_lives(tmp_path: Path) -> None:
    app = Flask("shop")
    busway = Busway(app, sqlite_messaging(tmp_path))
    with app.app_context(), pytest.raises(RuntimeError, match="request to a view"):
        _ = busway.session
    with pytest.raises(RuntimeError, match="application context"):
        _ = busway.messaging  # outside any app


def test_a_flask_sqlalchemy_database_other_than_the_messagings_is_refused_at_start_up(
    tmp_path: Path,
) -> None:
    app = Flask("shop")
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path / 'shop.db'}"
    SQLAlchemy(app)
    messaging = sqlite_messaging(tmp_path, "elsewhere.db")

    with pytest.raises(ConfigurationError, match="not on the messaging database"):
        Busway(app, messaging)
    messaging.close()


def test_a_session_on_another_database_is_refused_at_its_first_request(tmp_path: Path) -> None:
    app = Flask("shop")
    messaging = sqlite_messaging(tmp_path)
    other = create_engine(f"sqlite:///{tmp_path / 'other.db'}")
    Busway(app, messaging, session=sessionmaker(other))
    app.testing = True

    @app.post("/")
    def write() -> str:
        return "written"

    with pytest.raises(ConfigurationError, match="not on the messaging database"):
        app.test_client().post("/")
    messaging.close()
    other.dispose()


def test_requests_that_reach_no_view_or_static_files_open_no_transaction(
    tmp_path: Path,
) -> None:
    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "site.css").write_text("body {}")
    app = Flask("shop", static_folder=str(tmp_path / "static"))
    messaging = sqlite_messaging(tmp_path)
    made: list[Session] = []
    sessions = sessionmaker(messaging.database_engine)

    def session() -> Session:
        made.append(sessions())
        return made[-1]

    Busway(app, messaging, session=session)

    @app.get("/page")
    def page() -> str:
        return "page"

    client = app.test_client()
    assert client.get("/static/site.css").status_code == 200
    assert client.get("/nowhere").status_code == 404
    assert made == []
    assert client.get("/page").status_code == 200
    assert len(made) == 1
    messaging.close()


def test_a_view_is_tested_with_record_and_the_test_client() -> None:
    """What docs/flask.md shows: in-memory channels, no database, no transaction."""
    seen.clear()
    app = Flask("shop")
    messaging = Messaging(handlers=[note], channels=[InMemoryChannel("later")])
    busway = Busway(app, messaging)

    @app.get("/<path>")
    def page(path: str) -> str:
        busway.gateway(LaterEventBus).publish(PageWasSeen(path))
        return path

    with record(messaging) as recorded:
        assert app.test_client().get("/home").status_code == 200
        assert recorded.sent(LaterEventBus) == [PageWasSeen("home")]
        run_until_idle(messaging)
    assert seen == ["home"]


def test_flask_busway_runs_the_busway_commands_on_the_apps_messaging(tmp_path: Path) -> None:
    seen.clear()
    app = Flask("shop")
    messaging = sqlite_messaging(tmp_path)
    busway = Busway(app, messaging)

    @app.post("/<path>")
    def page(path: str) -> str:
        busway.gateway(OutboxEventBus).publish(PageWasSeen(path))
        return path

    runner = app.test_cli_runner()
    assert invoked(runner, "busway", "setup").output == "set up outbox\n"
    assert app.test_client().post("/home").status_code == 200
    assert "outbox  SqlChannel  1" in invoked(runner, "busway", "channels").output
    invoked(runner, "busway", "run", "outbox", "--until-empty")
    assert seen == ["home"]
    assert "outbox  SqlChannel  0" in invoked(runner, "busway", "channels").output
    assert "0 dead letter(s)" in invoked(runner, "busway", "dead-letter", "list").output
    assert "--app" not in invoked(runner, "busway", "run", "--help").output


def invoked(runner: Any, *args: str) -> Any:
    result = runner.invoke(args=list(args))
    assert result.exit_code == 0, result.output
    return result
