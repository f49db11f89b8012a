"""Fixtures of the recovery tests: the application of ``recovery_app`` on each database."""

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import recovery_app
from recovery_support import make_tables

from busway import Messaging


@pytest.fixture
async def app(database_url: str) -> AsyncIterator[Callable[..., Messaging]]:
    """Build ``recovery_app`` on ``database_url``, its tables fresh; closed at the end."""
    make_tables(database_url)
    made: list[Messaging] = []

    def build(**options: Any) -> Messaging:
        messaging = recovery_app.build(database_url, **options)
        made.append(messaging)
        messaging.setup()
        return messaging

    yield build
    for messaging in made:
        await messaging.aclose()
