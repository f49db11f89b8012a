"""Fixtures of the dashboard tests: the shop with dead letters made by a real worker, the
dashboard served by a real uvicorn server, and a headless Chromium driven by Playwright.

Chromium is Debian's (``/usr/bin/chromium``, which ``.ci/run`` installs): Playwright drives
it through ``executable_path`` rather than downloading a browser of its own.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dashboard_shop
import pytest
import uvicorn
from dashboard_shop import BillingBus, Carrier, Invoice, Ship, ShippingBus
from playwright.sync_api import Browser, Page, sync_playwright

from busway import Messaging
from dbsupport import create_tables

CHROMIUM = Path(os.environ.get("BUSWAY_TEST_CHROMIUM", "/usr/bin/chromium"))

# Each dashboard test runs on a SQLite file and on PostgreSQL.
DATABASES = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)


@dataclass
class Shop:
    messaging: Messaging
    carrier: Carrier

    def fail(self, *commands: Ship | Invoice) -> None:
        """Send ``commands`` with the carrier down, and let a worker fail them for good."""
        self.carrier.down = True
        for command in commands:
            bus = ShippingBus if isinstance(command, Ship) else BillingBus
            self.messaging.gateway(bus).send(command)
        self.messaging.run("shipping")
        self.messaging.run("billing")
        self.carrier.down = False

    def shipped(self) -> list[str]:
        return dashboard_shop.shipped(self.messaging)

    def letter_ids(self, **filters: Any) -> list[str]:
        return [letter.id for letter in self.messaging.dead_letters.list(**filters)]


@pytest.fixture
def shop(database_url: str) -> Iterator[Shop]:
    """The shop on ``database_url`` with three dead letters: two shipments the carrier
    refused, one invoice."""
    create_tables(database_url, dashboard_shop.metadata)
    messaging, carrier = dashboard_shop.build(database_url)
    messaging.setup()
    shop = Shop(messaging, carrier)
    shop.fail(Ship("o-1"), Ship("o-2"), Invoice("o-3"))
    try:
        yield shop
    finally:
        messaging.close()


@contextmanager
def serving(app: Any, host: str = "127.0.0.1") -> Iterator[str]:
    """``app`` served by uvicorn in a thread; yields its URL.

    The socket listens before the server starts, so the first request waits in its backlog
    rather than racing the start-up.
    """
    listening = socket.create_server((host, 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{listening.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        listening.close()
    assert not thread.is_alive(), "the dashboard's server did not stop"


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        message = f"Chromium is not installed at {CHROMIUM}: apt-get install chromium"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI: {message}", pytrace=False)
        pytest.skip(message)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A page of its own browser context: no cookies shared with another test."""
    context = browser.new_context()
    context.set_default_timeout(15_000)
    try:
        yield context.new_page()
    finally:
        context.close()


def csrf_of(html: str) -> str:
    """The CSRF field a dashboard page gives its forms."""
    found = re.search(r'<meta name="csrf" content="([^"]+)"', html)
    assert found, "the page has no CSRF field"
    return found[1]


def own_address() -> str | None:
    """An address of this machine other than loopback, if it has one."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
        address: str = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") or address == "0.0.0.0" else address
