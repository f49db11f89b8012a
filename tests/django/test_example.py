"""The example project under examples/django_project, run as a user would run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).parents[2] / "examples" / "django_project"


def manage(tmp_path: Path, *arguments: str) -> str:
    environment = dict(
        os.environ,
        SHOP_SQLITE_FILE=str(tmp_path / "shop.sqlite3"),
        DJANGO_SETTINGS_MODULE="shop.settings",
        PYTHONPATH=os.pathsep.join([str(PROJECT), *sys.path]),
    )
    environment.pop("BUSWAY_DJANGO_DATABASES", None)
    done = subprocess.run(
        [sys.executable, "manage.py", *arguments],
        cwd=PROJECT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


PLACE_TWO_ORDERS = """
from django.test import Client
client = Client(raise_request_exception=False)
print(client.post("/orders/o-1", {"product": "pen"}).status_code)
print(client.post("/orders/o-2", {"fail": "1"}).status_code)
"""
SHOW = """
from shop.models import Confirmation, Order
print(sorted(Order.objects.values_list("number", flat=True)))
print(sorted(Confirmation.objects.values_list("number", flat=True)))
"""


def test_the_example_shop_confirms_the_committed_order_only(tmp_path):
    manage(tmp_path, "migrate", "-v0")
    statuses = manage(tmp_path, "shell", "-v0", "-c", PLACE_TWO_ORDERS).split()
    assert statuses == ["201", "500"]
    depth = manage(tmp_path, "busway", "channels").splitlines()[1].split()
    assert depth[:3] == ["outbox", "SqlChannel", "1"]

    manage(tmp_path, "busway", "run", "outbox", "--until-empty")

    orders, confirmations = manage(tmp_path, "shell", "-v0", "-c", SHOW).splitlines()
    assert orders == confirmations == "['o-1']"
