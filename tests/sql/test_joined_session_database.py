"""A session bound to another database than the messaging one is refused when joined: its
outbox rows would be written, and committed, in that other database."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from busway import ConfigurationError, EventBus, Messaging, SqlChannel, asynchronous, event_handler
from dbsupport import SERVERS, async_url, sync_url


@dataclass
class Noted:
    text: str


@asynchronous("notes")
class Notes(EventBus):
    """Committed with the session's transaction."""


@event_handler
def note(event: Noted) -> None:
    pass


def other_database(database_url: str, tmp_path: Path) -> str:
    """A database on the same server that is not the messaging one."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        return f"sqlite:///{tmp_path / 'other.db'}"
    service = "postgresql" if url.get_backend_name() == "postgresql" else "mariadb"
    return SERVERS[service]


def test_a_session_on_another_database_is_refused(database_url: str, tmp_path: Path) -> None:
    messaging = Messaging(handlers=[note], channels=[SqlChannel("notes")], database=database_url)
    messaging.setup()
    elsewhere = create_engine(sync_url(other_database(database_url, tmp_path)))
    try:
        with (
            Session(elsewhere) as session,
            pytest.raises(ConfigurationError) as refused,
            messaging.transaction(session),
        ):
            messaging.gateway(Notes).publish(Noted("lost"))
        assert "the session is bound to" in str(refused.value)
        assert "bind the session to messaging.database_engine" in str(refused.value)
        assert messaging.channel("notes").depth() == 0
        # The messaging database's own sessions are joined as before.
        with Session(messaging.database_engine) as session:
            with messaging.transaction(session):
                messaging.gateway(Notes).publish(Noted("kept"))
            session.commit()
        assert messaging.channel("notes").depth() == 1
    finally:
        elsewhere.dispose()
        messaging.close()


async def test_an_async_session_on_another_database_is_refused(
    database_url: str, tmp_path: Path
) -> None:
    messaging = Messaging(handlers=[note], channels=[SqlChannel("notes")], database=database_url)
    await messaging.asetup()
    elsewhere = create_async_engine(async_url(other_database(database_url, tmp_path)))
    try:
        async with AsyncSession(elsewhere) as session:
            with pytest.raises(ConfigurationError, match="the session is bound to"):
                async with messaging.atransaction(session):
                    await messaging.gateway(Notes).apublish(Noted("lost"))
        assert messaging.channel("notes").depth() == 0
    finally:
        await elsewhere.dispose()
        await messaging.aclose()
