"""Worker processes for the RabbitMQ tests, and the application they run.

Run as ``python -c "import amqp_worker; amqp_worker.main()" ROLE DATABASE AMQP_URL QUEUE
[options]`` with this folder on ``PYTHONPATH``. Role ``relay`` runs the ``outbox`` channel,
which forwards to RabbitMQ; role ``consume`` runs the ``rabbit`` channel until it is empty.
Each ``Recorded`` event inserts a row under a unique constraint on its number, through the
handler's Session; the deduplication inbox must absorb every message delivered twice.

``--hang-at N`` makes the process stop for good at the Nth message (relay: once the batch is
confirmed by RabbitMQ, before the outbox rows are deleted; consumer: inside the handler,
its row written and not committed, or with ``--after-commit`` once the handler's transaction
committed, before the acknowledgement), after writing ``--marker``: the test kills it there.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Integer, MetaData, String, Table, insert
from sqlalchemy.orm import Session

from busway import (
    EventBus,
    Interceptor,
    Invocation,
    Messaging,
    RetryPolicy,
    SqlChannel,
    asynchronous,
    event_handler,
)
from busway.amqp import AmqpChannel
from busway.channels.base import Envelope, current_batch
from markers import write_atomically


@dataclass
class Recorded:
    number: int


@asynchronous("outbox", "rabbit")
class OutboxEvents(EventBus):
    """Events committed to the outbox, then relayed to RabbitMQ."""


metadata = MetaData()
effects = Table(
    "amqp_effects",
    metadata,
    Column("number", Integer, primary_key=True, autoincrement=False),
    Column("worker", String(50), nullable=False),
)


def _hang(marker: Path | None, text: str) -> None:
    assert marker is not None
    write_atomically(marker, text)
    while True:
        time.sleep(60)


class Recorder:
    def __init__(self, worker: str, hang_at: int | None, marker: Path | None) -> None:
        self.worker = worker
        self.hang_at = hang_at
        self.marker = marker
        self.calls = 0

    @event_handler
    def record(self, event: Recorded, session: Session) -> None:
        session.execute(insert(effects).values(number=event.number, worker=self.worker))
        self.calls += 1
        if self.calls == self.hang_at:
            _hang(self.marker, str(event.number))


class HangAfterCommit(Interceptor):
    """Its ``after`` hook runs once the handler's transaction has committed."""

    def __init__(self, hang_at: int, marker: Path | None) -> None:
        self.hang_at = hang_at
        self.marker = marker
        self.calls = 0

    def after(self, invocation: Invocation, result: Any) -> None:
        self.calls += 1
        if self.calls == self.hang_at:
            _hang(self.marker, str(invocation.message.payload.number))


class HangingRelayChannel(AmqpChannel):
    """Stops for good once its first batch is confirmed, before the outbox commits."""

    def __init__(self, *args: Any, marker: Path | None = None, **options: Any) -> None:
        super().__init__(*args, **options)
        self.marker = marker
        self.hanging = False

    def send(self, envelope: Envelope) -> None:
        super().send(envelope)
        batch = current_batch.get()
        if batch is not None and not self.hanging:
            self.hanging = True  # after the channel's own callback, which waits for confirms
            batch.before_ack.append(lambda: _hang(self.marker, "confirmed"))


def build(
    database: str,
    amqp_url: str,
    queue: str,
    *,
    worker: str = "test",
    hang_at: int | None = None,
    after_commit: bool = False,
    marker: Path | None = None,
    relay_hangs: bool = False,
) -> Messaging:
    rabbit = (
        HangingRelayChannel("rabbit", amqp_url, queue=queue, marker=marker)
        if relay_hangs
        else AmqpChannel("rabbit", amqp_url, queue=queue)
    )
    interceptors = [HangAfterCommit(hang_at, marker)] if hang_at and after_commit else []
    return Messaging(
        handlers=[Recorder(worker, None if after_commit else hang_at, marker)],
        channels=[SqlChannel("outbox"), rabbit],
        database=database,
        interceptors=interceptors,
        retry=RetryPolicy(retries=0),  # a repeated effect would fail on the unique number
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["relay", "consume"])
    parser.add_argument("database")
    parser.add_argument("amqp_url")
    parser.add_argument("queue")
    parser.add_argument("--worker", default="test")
    parser.add_argument("--hang-at", type=int)
    parser.add_argument("--after-commit", action="store_true")
    parser.add_argument("--marker", type=Path)
    args = parser.parse_args()

    relay = args.role == "relay"
    messaging = build(
        args.database,
        args.amqp_url,
        args.queue,
        worker=args.worker,
        hang_at=None if relay else args.hang_at,
        after_commit=args.after_commit,
        marker=args.marker,
        relay_hangs=relay and args.hang_at is not None,
    )
    result = messaging.run("outbox" if relay else "rabbit")
    messaging.close()
    print(json.dumps({"handled": result.handled, "failed": result.failed}))
