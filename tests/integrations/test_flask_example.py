"""examples/flask_app.py, run against each database."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from dbsupport import drop_tables, sync_url

EXAMPLE = Path(__file__).parents[2] / "examples" / "flask_app.py"


def load_example(database_url: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    url = sync_url(database_url).render_as_string(hide_password=False)
    monkeypatch.setenv("BUSWAY_DATABASE", url)
    spec = importlib.util.spec_from_file_location("flask_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "flask_example", module)
    spec.loader.exec_module(module)
    return module


def test_a_view_commits_its_order_and_event_together(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    drop_tables(database_url, "web_flask_example_orders", "web_flask_example_confirmations")
    example = load_example(database_url, monkeypatch)
    with example.app.app_context():
        example.db.create_all()
    client = example.app.test_client()

    placed = client.post("/orders/o-1")
    rejected = client.post("/orders/bad-1")

    assert (placed.status_code, rejected.status_code) == (200, 422)
    assert example.messaging.channel("outbox").depth() == 1
    result = example.app.test_cli_runner().invoke(args=["busway", "run", "outbox", "--until-empty"])
    assert result.exit_code == 0, result.output
    assert example.confirmed == ["o-1"]
    with example.app.app_context():
        assert [order.order_id for order in example.db.session.query(example.Order)] == ["o-1"]
        confirmations = example.db.session.query(example.Confirmation)
        assert [confirmation.order_id for confirmation in confirmations] == ["o-1"]
        example.db.engine.dispose()
