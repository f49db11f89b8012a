"""Ordering keys across worker processes: three workers of four consumers each on a
partitioned channel, one killed with SIGKILL mid-run, and every key's messages still take
effect once each, in the order they were sent: 20,000 messages over 200 keys through an
outbox relayed to RabbitMQ."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import amqp_ordering_worker as app
import pytest
from amqp_support import broker as broker  # fixtures: pytest finds them by name
from amqp_support import queues as queues
from amqp_support import rabbitmq_in_use as rabbitmq_in_use
from amqp_support import wait_until
from sqlalchemy import MetaData, func, select

from busway import Messaging
from dbsupport import create_tables, drop_tables
from workers import finish, kill_when, start_worker

HERE = Path(__file__).parent
SIZES = {"relayed": (200, 100), "direct": (105, 20)}
"""Keys and steps per key: 20,000 messages through the outbox relay, fewer published directly
(the partitions' order is the same; the relay's batches are what is new)."""


@pytest.fixture(params=["direct", "relayed"])
def setting(
    request: pytest.FixtureRequest, database_url: str, amqp_url: str, queues: Callable[..., str]
) -> Iterator[tuple[str, str, Messaging, bool]]:
    """A queue and a table of the test's own, and the application's ``Messaging``: steps
    published to RabbitMQ directly, or committed to an outbox and relayed there."""
    relayed = request.param == "relayed"
    queue = queues(app.PARTITIONS)
    table = f"amqp_steps_{uuid.uuid4().hex[:8]}"
    create_tables(database_url, app.steps_table(table, MetaData()).metadata)
    messaging = app.build(database_url, amqp_url, queue, table, relayed=relayed)
    messaging.setup()
    yield queue, table, messaging, relayed
    messaging.close()
    drop_tables(database_url, table, f"{table}_outbox", f"{table}_outbox_in_hand")


def _rows(messaging: Messaging, table: str) -> list[tuple[str, int, str]]:
    steps = app.steps_table(table)
    with messaging.database_engine.connect() as connection:
        query = select(steps.c.key, steps.c.seq, steps.c.worker).order_by(steps.c.position)
        return [(key, seq, worker) for key, seq, worker in connection.execute(query)]


def _count(messaging: Messaging, table: str) -> int:
    with messaging.database_engine.connect() as connection:
        return int(
            connection.execute(
                select(func.count()).select_from(app.steps_table(table))
            ).scalar_one()
        )


@pytest.mark.timeout(300)
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_each_keys_order_holds_across_workers_one_of_them_killed(
    setting: tuple[str, str, Messaging, bool], database_url: str, amqp_url: str, tmp_path: Path
) -> None:
    queue, table, messaging, relayed = setting
    keys, per_key = SIZES["relayed" if relayed else "direct"]
    steps = messaging.gateway(app.RelayedSteps if relayed else app.Steps)
    with messaging.transaction() if relayed else contextlib.nullcontext():  # one commit
        for seq in range(per_key):
            for number in range(keys):
                steps.publish(app.Step(f"key-{number}", seq))
    marker = tmp_path / "hanging"
    relaying = ["--relayed"] if relayed else []

    def start(name: str) -> subprocess.Popen[str]:
        return start_worker(
            HERE, "amqp_ordering_worker", database_url, amqp_url, queue, table,
            "--worker", name, "--hang-at", "150", "--marker", str(marker), *relaying,
        )  # fmt: skip

    workers = {name: start(name) for name in ("one", "two", "three")}
    try:
        wait_until(marker.exists, "a worker to hang in its 150th handler", timeout=60)
        pid = int(marker.read_text())
        (killed,) = [name for name, worker in workers.items() if worker.pid == pid]
        kill_when(marker, workers.pop(killed))

        wait_until(
            lambda: _count(messaging, table) == keys * per_key,
            "every step to take effect",
            timeout=240,
        )
    finally:
        for worker in workers.values():
            if worker.poll() is None:
                os.kill(worker.pid, signal.SIGTERM)
    for worker in workers.values():
        finish(worker)

    rows = _rows(messaging, table)
    order: dict[str, list[int]] = {}
    for key, seq, _ in rows:
        order.setdefault(key, []).append(seq)
    assert len(order) == keys
    assert all(seqs == list(range(per_key)) for seqs in order.values()), {
        key: seqs for key, seqs in order.items() if seqs != list(range(per_key))
    }
    # The partitions were shared: each survivor handled some, not one of them all.
    assert set(workers) <= {worker for _, _, worker in rows}, "every survivor took a share"
    assert messaging.dead_letters.list() == []
    assert messaging.channel("steps").depth() == 0
    if relayed:
        assert messaging.channel("outbox").depth() == 0
