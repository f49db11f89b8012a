"""A worker process for the Redis tests, and the application it runs.

Run as ``python -c "import redis_worker; redis_worker.main()" REDIS_URL STREAM DATABASE_URL
NAME [options]`` with this folder on ``PYTHONPATH``: it consumes the ``work`` channel on
``STREAM``. Each ``Record`` command inserts a row under a unique constraint on the record's
id, through the handler's Session; the database's inbox records each message it handled.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Column, Integer, MetaData, String, Table, insert
from sqlalchemy.orm import Session

from busway import CommandBus, Messaging, RetryPolicy, asynchronous, command_handler
from busway.redis import RedisChannel


@dataclass
class Record:
    id: int


@asynchronous("work")
class WorkBus(CommandBus):
    """Commands sent here wait on the ``work`` channel, a Redis stream."""


metadata = MetaData()
handled = Table(
    "test_redis_handled",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("worker", String(50), nullable=False),
)


class Recorder:
    def __init__(self, worker: str, block_at: int | None, marker: Path | None) -> None:
        self.worker = worker
        self.block_at = block_at
        self.marker = marker
        self.calls = 0

    @command_handler
    def record(self, command: Record, session: Session) -> None:
        self.calls += 1
        if self.calls == self.block_at:
            # Mid-handler, nothing written yet: stay here until killed.
            assert self.marker is not None
            self.marker.write_text(str(command.id))
            while True:
                time.sleep(60)
        session.execute(insert(handled).values(id=command.id, worker=self.worker))


def build(
    redis_url: str,
    stream: str,
    database_url: str,
    worker: str = "test",
    *,
    batch_size: int = 100,
    claim_idle: float = 30.0,
    block_at: int | None = None,
    marker: Path | None = None,
) -> Messaging:
    channel = RedisChannel(
        "work", redis_url, stream=stream, batch_size=batch_size, claim_idle=claim_idle
    )
    return Messaging(
        handlers=[Recorder(worker, block_at, marker)],
        channels=[channel],
        database=database_url,
        retry=RetryPolicy(retries=0),  # a duplicate would fail on the unique id: keep it
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("redis_url")
    parser.add_argument("stream")
    parser.add_argument("database_url")
    parser.add_argument("worker")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--block-at", type=int)
    parser.add_argument("--marker", type=Path)
    args = parser.parse_args()

    messaging = build(
        args.redis_url,
        args.stream,
        args.database_url,
        args.worker,
        batch_size=args.batch_size,
        block_at=args.block_at,
        marker=args.marker,
    )
    messaging.run("work")
    messaging.close()
