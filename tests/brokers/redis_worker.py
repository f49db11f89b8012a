"""A worker process for the Redis tests, and the application it runs.

Run as ``python -c "import redis_worker; redis_worker.main()" ROLE REDIS_URL STREAM
DATABASE_URL NAME [options]`` with this folder on ``PYTHONPATH``. Role ``consume`` consumes
the ``work`` channel on ``STREAM``; role ``relay`` runs the ``outbox`` channel, which forwards
to it. Each ``Record`` command inserts a row under a unique constraint on the record's id,
through the handler's Session; the database's inbox records each message it handled, and
must absorb every message delivered twice.

``--block-at N`` makes the process stop for good at the Nth message (consumer: inside the
handler, nothing written yet; relay: once the batch of its Nth send is on Redis, before the
outbox rows are deleted), after writing ``--marker``: the test kills it there. Role ``drain``
consumes until nothing is left on the stream, pending entries of dead consumers included;
``--poison ID`` makes the handler of that record end the process with ``os._exit(1)``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Integer, MetaData, String, Table, insert
from sqlalchemy.orm import Session

from busway import CommandBus, Messaging, RetryPolicy, SqlChannel, asynchronous, command_handler
from busway.channels.base import Envelope, current_batch
from busway.redis import RedisChannel
from markers import write_atomically


@dataclass
class Record:
    id: int


@asynchronous("work")
class WorkBus(CommandBus):
    """Commands sent here wait on the ``work`` channel, a Redis stream."""


@asynchronous("outbox", "work")
class OutboxWorkBus(CommandBus):
    """Commands committed to the outbox, then relayed to the ``work`` stream."""


metadata = MetaData()
handled = Table(
    "test_redis_handled",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("worker", String(50), nullable=False),
)


def _block(marker: Path | None, text: str) -> None:
    assert marker is not None
    write_atomically(marker, text)
    while True:
        time.sleep(60)


class Recorder:
    def __init__(
        self, worker: str, block_at: int | None, marker: Path | None, poison: int | None = None
    ) -> None:
        self.worker = worker
        self.poison = poison
        self.block_at = block_at
        self.marker = marker
        self.calls = 0

    @command_handler
    def record(self, command: Record, session: Session) -> None:
        self.calls += 1
        if self.calls == self.block_at:
            _block(self.marker, str(command.id))  # mid-handler, nothing written yet
        if command.id == self.poison:
            os._exit(1)  # a handler that kills its worker, as a segfault would
        session.execute(insert(handled).values(id=command.id, worker=self.worker))


class BlockingRelayChannel(RedisChannel):
    """Stops for good once the batch of its Nth send is on Redis, before the outbox commits."""

    def __init__(self, *args: Any, block_at: int, marker: Path | None, **options: Any) -> None:
        super().__init__(*args, **options)
        self.block_at = block_at
        self.marker = marker
        self.sends = 0

    def send(self, envelope: Envelope) -> None:
        super().send(envelope)
        self.sends += 1
        if self.sends == self.block_at:
            batch = current_batch.get()
            assert batch is not None, "a relay sends within the batch of the outbox"
            # After the channel's own callback, which sends the batch's pipeline to Redis.
            batch.before_ack.append(lambda: _block(self.marker, "sent"))


def build(
    redis_url: str,
    stream: str,
    database_url: str,
    worker: str = "test",
    *,
    batch_size: int = 100,
    claim_idle: float = 30.0,
    block_at: int | None = None,
    relay_block_at: int | None = None,
    marker: Path | None = None,
    poison: int | None = None,
    max_crashes: int | None = 3,
) -> Messaging:
    options: dict[str, Any] = {"stream": stream, "batch_size": batch_size, "claim_idle": claim_idle}
    channel = (
        BlockingRelayChannel("work", redis_url, block_at=relay_block_at, marker=marker, **options)
        if relay_block_at is not None
        else RedisChannel("work", redis_url, **options)
    )
    return Messaging(
        handlers=[Recorder(worker, block_at, marker, poison)],
        channels=[SqlChannel("outbox"), channel],
        database=database_url,
        retry=RetryPolicy(retries=0),  # a duplicate would fail on the unique id: keep it
        max_crashes=max_crashes,
    )


def drain(messaging: Messaging, asynchronously: bool) -> None:
    """Consume ``work`` until nothing is left, what other consumers left pending included."""
    channel = messaging.channel("work")
    while channel.depth():
        if asynchronously:
            asyncio.run(_arun(messaging))
        else:
            messaging.run("work", until_empty=False, time_limit=0.5)


async def _arun(messaging: Messaging) -> None:
    try:
        await messaging.arun("work", until_empty=False, time_limit=0.5)
    finally:
        await messaging.aclose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["consume", "relay", "drain"])
    parser.add_argument("redis_url")
    parser.add_argument("stream")
    parser.add_argument("database_url")
    parser.add_argument("worker")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--block-at", type=int)
    parser.add_argument("--marker", type=Path)
    parser.add_argument("--poison", type=int)
    parser.add_argument("--max-crashes", type=int, default=3)
    parser.add_argument("--claim-idle", type=float, default=30.0)
    parser.add_argument("--asyncio", action="store_true")
    args = parser.parse_args()

    relay = args.role == "relay"
    messaging = build(
        args.redis_url,
        args.stream,
        args.database_url,
        args.worker,
        batch_size=args.batch_size,
        block_at=None if relay else args.block_at,
        relay_block_at=args.block_at if relay else None,
        marker=args.marker,
        poison=args.poison,
        max_crashes=args.max_crashes,
        claim_idle=args.claim_idle,
    )
    if args.role == "drain":
        drain(messaging, args.asyncio)
        messaging.close()
        return
    messaging.run("outbox" if relay else "work")
    messaging.close()
