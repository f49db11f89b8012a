"""Fixtures of the dashboard tests: the shop on each database, and a headless Chromium
driven by Playwright.

Chromium is Debian's (``/usr/bin/chromium``, which ``.ci/run`` installs): Playwright drives
it through ``executable_path`` rather than downloading a browser of its own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import dashboard_shop
import pytest
from dashboard_shop import Invoice, Ship
from dashboard_support import Shop
from playwright.sync_api import Browser, Page, sync_playwright

from dbsupport import create_tables

CHROMIUM = Path(os.environ.get("BUSWAY_TEST_CHROMIUM", "/usr/bin/chromium"))


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


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Chromium, for one test module. Playwright's sync API holds an event loop while it is
    started, so no asyncio test may run until it stops: it must not outlive the module."""
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
