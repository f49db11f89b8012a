"""Take the screenshots of docs/dashboard.md: each page of the dashboard over a small shop.

The shop runs on a SQLite file of its own, its dead letters made by a real worker; another
worker runs while the Workers page is taken, seen there by its heartbeats. The dashboard is
served by uvicorn and photographed by Debian's Chromium through Playwright.

    python tools/dashboard_screenshots.py            # writes docs/images/dashboard-*.png
    python tools/dashboard_screenshots.py --chromium /path/to/chromium
"""

from __future__ import annotations

import argparse
import importlib
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from playwright.sync_api import Page, sync_playwright

from busway import (
    CommandBus,
    EventBus,
    Messaging,
    RetryPolicy,
    SqlChannel,
    asynchronous,
    command_handler,
    event_handler,
)
from busway.dashboard import dashboard_app
from busway.liveness import WorkerRecord
from busway.recovery import retry_policy

IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"
TOKEN = "screenshots"


@dataclass
class ShipOrder:
    order_id: str
    address: str


@dataclass
class ChargeCard:
    order_id: str
    amount_cents: int


@dataclass
class OrderShipped:
    order_id: str


class CarrierUnavailable(Exception):
    pass


class CardDeclined(Exception):
    pass


@asynchronous("shipping")
class ShippingBus(CommandBus):
    pass


@asynchronous("payments")
class PaymentBus(CommandBus):
    pass


@asynchronous("outbox")
class OutboxEvents(EventBus):
    pass


@command_handler
def ship_order(command: ShipOrder) -> None:
    if command.address.startswith("?"):
        raise ValueError(f"order {command.order_id} has no address the carrier accepts")
    raise CarrierUnavailable("carrier API answered 503 Service Unavailable")


@command_handler
@retry_policy(RetryPolicy(retries=5, initial_delay=2.0, retry_on=(CarrierUnavailable,)))
def charge_card(command: ChargeCard) -> None:
    raise CardDeclined(f"card declined for order {command.order_id}: insufficient funds")


@event_handler
def send_confirmation(event: OrderShipped) -> None:
    raise KeyError("template 'order-shipped' is missing")


def shop(url: str) -> Messaging:
    return Messaging(
        handlers=[ship_order, charge_card, send_confirmation],
        channels=[SqlChannel("shipping"), SqlChannel("payments"), SqlChannel("outbox")],
        database=url,
        retry=RetryPolicy(retries=0, instant_retries=1),
        channel_retries={"outbox": RetryPolicy(retries=3, initial_delay=1.0)},
    )


def fill(messaging: Messaging) -> None:
    """Dead letters of each handler, made by a worker, and messages still waiting."""
    shipping = messaging.gateway(ShippingBus)
    for number in range(1, 6):
        shipping.send(ShipOrder(f"o-{1040 + number}", f"{number} Harbour Road"))
    shipping.send(ShipOrder("o-1046", "?"))
    payments = messaging.gateway(PaymentBus)
    payments.send(ChargeCard("o-1047", 4_990))
    messaging.gateway(OutboxEvents).publish(OrderShipped("o-1040"))
    for channel in ("shipping", "payments", "outbox"):
        messaging.run(channel)
    for number in range(20):
        shipping.send(ShipOrder(f"o-{1100 + number}", "Waiting Lane"))


@contextmanager
def serving(app: Any) -> Iterator[str]:
    listening = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listening.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        listening.close()


@contextmanager
def working(messaging: Messaging, channels: list[str]) -> Iterator[None]:
    """A worker of ``channels`` running in a thread, beating often, until the block ends."""
    worker = messaging.worker(
        channels, until_empty=False, poll_interval=0.1, heartbeat_interval=0.2
    )
    thread = threading.Thread(target=worker.run, name="shop-worker", daemon=True)
    thread.start()
    try:
        yield
    finally:
        worker.stop()
        thread.join(timeout=30)


def wait_for_worker(messaging: Messaging, failed: int, timeout: float = 30.0) -> WorkerRecord:
    """The live worker once its heartbeat counts ``failed`` failures."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in messaging.workers():
            if record.alive and record.failed >= failed:
                return record
        time.sleep(0.05)
    raise SystemExit(f"no worker's heartbeat counted {failed} failures in {timeout:g}s")


def shoot(page: Page, name: str) -> None:
    path = IMAGES / f"dashboard-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"wrote {path.relative_to(IMAGES.parent.parent)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    arguments = parser.parse_args()
    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        messaging = shop(f"sqlite:///{folder}/shop.db")
        try:
            fill(messaging)
            with serving(dashboard_app(messaging, token=TOKEN)) as url, sync_playwright() as p:
                browser = p.chromium.launch(executable_path=arguments.chromium)
                page = browser.new_page(viewport={"width": 1280, "height": 720})
                page.goto(f"{url}/")
                shoot(page, "login")
                page.fill('input[name="token"]', TOKEN)
                page.get_by_role("button", name="Sign in").click()
                page.wait_for_selector("#channels")
                more = messaging.gateway(ShippingBus)
                for number in range(6):
                    more.send(ShipOrder(f"o-{1200 + number}", "Waiting Lane"))
                time.sleep(1.5)  # a second look, later, tells how fast the depth changes
                page.reload()
                shoot(page, "channels")
                page.goto(f"{url}/handlers")
                shoot(page, "handlers")
                page.goto(f"{url}/dead-letters")
                shoot(page, "dead-letters")
                page.goto(f"{url}/dead-letters?handler=dashboard_screenshots.ship_order")
                page.locator("#dead-letters tbody tr[data-letter] a").first.click()
                page.wait_for_selector("#traceback")
                shoot(page, "dead-letter")
                with working(messaging, ["payments", "outbox"]):
                    wait_for_worker(messaging, failed=0)
                    messaging.gateway(PaymentBus).send(ChargeCard("o-1048", 1_250))
                    wait_for_worker(messaging, failed=1)
                    page.goto(f"{url}/workers")
                    page.wait_for_selector("#workers tbody tr[data-worker]")
                    shoot(page, "workers")
                browser.close()
        finally:
            messaging.close()


if __name__ == "__main__":
    # Run as the module it is, so that its classes are named dashboard_screenshots.X, not
    # __main__.X, in the pages.
    importlib.import_module("dashboard_screenshots").main()
