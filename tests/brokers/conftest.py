"""Fixtures of the broker tests.

A broker that cannot be reached skips its tests, except on CI (``CI=true``), where it fails
them: a missing service must never pass unnoticed.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import pytest

AMQP_URL = os.environ.get("BUSWAY_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1/")


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """The RabbitMQ server of the tests (``BUSWAY_TEST_AMQP_URL``), checked to be reachable."""
    url = urlsplit(AMQP_URL)
    address = (url.hostname or "127.0.0.1", url.port or 5672)
    try:
        socket.create_connection(address, timeout=2).close()
    except OSError as error:
        message = (
            f"RabbitMQ is not running at {address[0]}:{address[1]} ({error}). The RabbitMQ "
            "tests need it; start it or set BUSWAY_TEST_AMQP_URL."
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI: {message}", pytrace=False)
        pytest.skip(message)
    return AMQP_URL
