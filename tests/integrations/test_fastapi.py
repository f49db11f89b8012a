"""examples/fastapi_app.py, run against each database."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from dbsupport import drop_tables

EXAMPLE = Path(__file__).parents[2] / "examples" / "fastapi_app.py"


def load_example(database_url: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("BUSWAY_DATABASE", database_url)
    spec = importlib.util.spec_from_file_location("fastapi_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "fastapi_example", module)
    spec.loader.exec_module(module)
    return module


async def test_a_view_commits_its_order_and_event_together(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not database_url.startswith("sqlite"):
        drop_tables(database_url, "web_orders")
    example = load_example(database_url, monkeypatch)
    messaging = example.messaging
    transport = httpx.ASGITransport(app=example.app)
    async with example.app.router.lifespan_context(example.app):  # as the server starts it
        async with messaging.async_database_engine.begin() as connection:
            await connection.run_sync(example.Base.metadata.create_all)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            placed = await client.post("/orders/o-1")
            rejected = await client.post("/orders/bad-1")
        assert placed.status_code == 200
        assert rejected.status_code == 422
        assert messaging.channel("outbox").depth() == 1

        result = await messaging.arun("outbox")

        assert result.handled == 1
        assert example.confirmed == ["o-1"]
        async with messaging.async_database_engine.connect() as connection:
            orders = await connection.run_sync(
                lambda sync: sync.exec_driver_sql("SELECT order_id FROM web_orders").all()
            )
        assert [tuple(row) for row in orders] == [("o-1",)]
