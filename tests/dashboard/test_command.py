"""``busway dashboard``, run as a real executable: safe by default."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from dashboard_support import DATABASES, Shop, own_address

pytestmark = DATABASES

HERE = Path(__file__).parent
SOURCES = HERE.parents[1] / "src"
TOKEN = "the dashboard's token"


def busway(*args: str, database_url: str, **env: str) -> subprocess.Popen[str]:
    executable = shutil.which("busway", path=str(Path(sys.executable).parent))
    assert executable, "the busway console script is not installed next to this Python"
    path = os.pathsep.join([str(SOURCES), str(HERE), os.environ.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [executable, "dashboard", "--app", "dashboard_shop:messaging", *args],
        env={**os.environ, "PYTHONPATH": path, "DASHBOARD_SHOP_URL": database_url, **env},
        stderr=subprocess.PIPE,
        text=True,
    )


@contextmanager
def dashboard_process(*args: str, database_url: str, **env: str) -> Iterator[str]:
    """A running ``busway dashboard``; yields the URL it says it listens on."""
    process = busway(*args, database_url=database_url, **env)
    lines: queue.Queue[str] = queue.Queue()
    assert process.stderr is not None
    stderr = process.stderr
    threading.Thread(target=lambda: [lines.put(line) for line in stderr], daemon=True).start()
    try:
        while True:
            line = lines.get(timeout=60)
            if line.startswith("busway dashboard on "):
                break
        yield line.split()[3].rstrip("/,")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    # uvicorn stops, then lets the signal end the process as it would have without it
    assert process.returncode in (0, -signal.SIGTERM)


def test_it_will_not_listen_beyond_loopback_without_a_token(shop: Shop, database_url: str) -> None:
    process = busway("--host", "0.0.0.0", "--port", "0", database_url=database_url)
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == 2
    assert "--host 0.0.0.0 can be reached from other machines" in stderr
    assert "--token" in stderr and "BUSWAY_DASHBOARD_TOKEN" in stderr


def test_on_every_address_it_asks_every_request_for_its_token(
    shop: Shop, database_url: str
) -> None:
    with dashboard_process(
        "--host", "0.0.0.0", "--port", "0",
        database_url=database_url, BUSWAY_DASHBOARD_TOKEN=TOKEN,
    ) as url:  # fmt: skip
        port = url.rpartition(":")[2]
        base = f"http://{own_address() or '127.0.0.1'}:{port}"
        refused = httpx.get(f"{base}/dead-letters", timeout=30)
        taken = httpx.get(
            f"{base}/dead-letters", headers={"authorization": f"Bearer {TOKEN}"}, timeout=30
        )
    assert url == f"http://0.0.0.0:{port}"
    assert refused.status_code == 401
    assert taken.status_code == 200
    assert all(letter in taken.text for letter in shop.letter_ids())


def test_by_default_it_listens_on_loopback_for_this_machine_only(
    shop: Shop, database_url: str
) -> None:
    with dashboard_process("--port", "0", "--read-only", database_url=database_url) as url:
        page = httpx.get(f"{url}/dead-letters", timeout=30)
        address = own_address()
        if address is not None:
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://{address}:{url.rpartition(':')[2]}/", timeout=30)
    assert url.startswith("http://127.0.0.1:")
    assert page.status_code == 200
    assert "read-only" in page.text and "Replay selected" not in page.text
