"""A worker process for the SQL tests, and the application it runs.

Run as ``python -c "import sql_worker; sql_worker.main()" URL NAME [options]`` with this
folder on ``PYTHONPATH``: it builds the same ``Messaging`` as the tests do and consumes the
``work`` channel until it is empty. Each ``Record`` command inserts a row under a unique
constraint on the record's id and counts itself in the worker's row of a counter table, both
through the handler's Session, in the channel's transaction.
"""

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Column, Integer, MetaData, String, Table, insert, update
from sqlalchemy.orm import Session

from busway import CommandBus, Messaging, RetryPolicy, SqlChannel, asynchronous, command_handler
from markers import write_atomically


@dataclass
class Record:
    id: int


@asynchronous("work")
class WorkBus(CommandBus):
    """Commands sent here wait on the ``work`` channel for a worker process."""


metadata = MetaData()
handled = Table(
    "test_handled",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("worker", String(50), nullable=False),
)
counters = Table(
    "test_counters",
    metadata,
    Column("worker", String(50), primary_key=True),
    Column("n", Integer, nullable=False),
)


class Recorder:
    def __init__(self, worker: str, block_at: int | None = None, marker: Path | None = None):
        self.worker = worker
        self.block_at = block_at
        self.marker = marker
        self.calls = 0

    @command_handler
    def record(self, command: Record, session: Session) -> None:
        session.execute(insert(handled).values(id=command.id, worker=self.worker))
        session.execute(
            update(counters).where(counters.c.worker == self.worker).values(n=counters.c.n + 1)
        )
        self.calls += 1
        if self.calls == self.block_at:
            # The business row is written, not committed: stay here until killed.
            assert self.marker is not None
            write_atomically(self.marker, str(command.id))
            while True:
                time.sleep(60)


def build(
    url: str,
    worker: str = "test",
    batch_size: int = 100,
    block_at: int | None = None,
    marker: Path | None = None,
) -> Messaging:
    return Messaging(
        handlers=[Recorder(worker, block_at, marker)],
        channels=[SqlChannel("work", batch_size=batch_size)],
        database=url,
        retry=RetryPolicy(retries=0),  # a duplicate would fail on the unique id: keep it
    )


def _wait_for(path: Path, deadline: float) -> None:
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} did not appear")
        time.sleep(0.005)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("worker")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--block-at", type=int)
    parser.add_argument("--marker", type=Path)
    parser.add_argument("--ready", type=Path, help="write this file when ready to consume")
    parser.add_argument("--go", type=Path, help="then wait for this file before consuming")
    args = parser.parse_args()

    messaging = build(args.url, args.worker, args.batch_size, args.block_at, args.marker)
    with messaging.transaction() as session:
        session.execute(insert(counters).values(worker=args.worker, n=0))
    if args.ready:
        write_atomically(args.ready, "ready")
    if args.go:
        _wait_for(args.go, time.monotonic() + 60)
    result = messaging.run("work")
    messaging.close()
    print(json.dumps({"handled": result.handled, "failed": result.failed}))
