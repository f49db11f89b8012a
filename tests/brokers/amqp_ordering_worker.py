"""Worker processes for the RabbitMQ ordering tests, and the application they run.

Run as ``python -c "import amqp_ordering_worker; amqp_ordering_worker.main()" DATABASE
AMQP_URL QUEUE TABLE [options]`` with this folder on ``PYTHONPATH``. The worker runs the
partitioned ``steps`` channel with four consumer threads until SIGTERM. Each ``Step`` inserts a
row (its key and sequence number) into TABLE through the handler's Session; the row's serial
``position`` tells the order the steps were handled in, and a unique constraint on (key, seq)
leaves the deduplication inbox to absorb every message delivered twice.

``--relayed`` puts an outbox in front: steps are committed to the ``outbox`` SqlChannel
(``RelayedSteps``) and the worker relays them to the partitioned channel as it consumes it.

``--hang-at N`` makes the first worker to handle N messages stop for good inside the handler
of its Nth, its row written and not committed, after writing its process id to ``--marker``:
the test kills it there.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Column, Integer, MetaData, String, Table, UniqueConstraint, insert
from sqlalchemy.orm import Session

from busway import (
    EventBus,
    Messaging,
    RetryPolicy,
    SqlChannel,
    asynchronous,
    event_handler,
    ordered_by,
)
from busway.amqp import AmqpChannel
from markers import write_atomically

PARTITIONS = 12


@ordered_by("key")
@dataclass
class Step:
    key: str
    seq: int


@asynchronous("steps")
class Steps(EventBus):
    pass


@asynchronous("outbox", "steps")
class RelayedSteps(EventBus):
    """Committed to the outbox, then relayed to RabbitMQ in each key's order."""


def steps_table(name: str, metadata: MetaData | None = None) -> Table:
    return Table(
        name,
        metadata or MetaData(),
        Column("position", Integer, primary_key=True, autoincrement=True),
        Column("key", String(50), nullable=False),
        Column("seq", Integer, nullable=False),
        Column("worker", String(50), nullable=False),
        UniqueConstraint("key", "seq"),
    )


class Recorder:
    def __init__(self, table: Table, worker: str, hang_at: int | None, marker: Path | None):
        self.table = table
        self.worker = worker
        self.hang_at = hang_at
        self.marker = marker
        self.calls = 0
        self.lock = threading.Lock()

    @event_handler
    def record(self, step: Step, session: Session) -> None:
        session.execute(insert(self.table).values(key=step.key, seq=step.seq, worker=self.worker))
        with self.lock:
            self.calls += 1
            hang = self.calls == self.hang_at and self._first_to_hang()
        if hang:
            assert self.marker is not None
            write_atomically(self.marker, str(os.getpid()))
            while True:
                time.sleep(60)

    def _first_to_hang(self) -> bool:
        assert self.marker is not None
        claim = self.marker.with_name(self.marker.name + ".claim")
        try:
            os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True


def build(
    database: str,
    amqp_url: str,
    queue: str,
    table: str,
    *,
    worker: str = "test",
    hang_at: int | None = None,
    marker: Path | None = None,
    relayed: bool = False,
) -> Messaging:
    channel = AmqpChannel("steps", amqp_url, queue=queue, partitions=PARTITIONS, prefetch=20)
    outbox = [SqlChannel("outbox", table=f"{table}_outbox")] if relayed else []
    return Messaging(
        handlers=[Recorder(steps_table(table), worker, hang_at, marker)],
        channels=[*outbox, channel],
        database=database,
        retry=RetryPolicy(retries=0),  # a repeated effect would fail on the unique (key, seq)
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("database")
    parser.add_argument("amqp_url")
    parser.add_argument("queue")
    parser.add_argument("table")
    parser.add_argument("--worker", default="test")
    parser.add_argument("--hang-at", type=int)
    parser.add_argument("--marker", type=Path)
    parser.add_argument("--relayed", action="store_true")
    args = parser.parse_args()

    messaging = build(
        args.database,
        args.amqp_url,
        args.queue,
        args.table,
        worker=args.worker,
        hang_at=args.hang_at,
        marker=args.marker,
        relayed=args.relayed,
    )
    channels = ["outbox", "steps"] if args.relayed else ["steps"]
    result = messaging.run(channels, until_empty=False, concurrency=4)
    messaging.close()
    print(json.dumps({"handled": result.handled, "failed": result.failed}))
