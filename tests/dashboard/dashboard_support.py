"""What the dashboard tests share: the shop with dead letters made by a real worker, and the
dashboard served by a real uvicorn server."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dashboard_shop
import pytest
import uvicorn
from dashboard_shop import BillingBus, Carrier, Invoice, Ship, ShippingBus

from busway import Messaging

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
