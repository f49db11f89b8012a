"""A worker process for the ordering-key tests, and the application it runs.

Run as ``python -c "import ordered_worker; ordered_worker.main()" URL NAME [options]`` with
this folder on ``PYTHONPATH``: it consumes the ``ordered`` channel with ``--concurrency``
threads until the channel is empty. Each ``Step`` command inserts its key and sequence number
into a table whose autoincrement column numbers the rows in the order they were inserted,
through the handler's Session, in the channel's transaction: a batch rolled back leaves no
row, and the numbers tell the order in which the steps were handled.
"""

import argparse
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Column, Integer, MetaData, String, Table, insert
from sqlalchemy.orm import Session

from busway import CommandBus, Messaging, SqlChannel, asynchronous, command_handler
from markers import write_atomically

CHANNEL = "ordered"
POLL = 0.2


@dataclass
class Step:
    key: int
    seq: int


@asynchronous(CHANNEL)
class OrderedBus(CommandBus):
    """Steps sent here wait on the ``ordered`` channel for a worker process."""


metadata = MetaData()
handled = Table(
    "test_ordered_handled",
    metadata,
    Column("position", Integer, primary_key=True, autoincrement=True),
    Column("key", Integer, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("worker", String(50), nullable=False),
)


class Recorder:
    """Records each step; the ``block_at``-th call of this process writes ``marker`` with its
    step and stays in the handler, its row written and not committed, until killed."""

    def __init__(self, worker: str, block_at: int | None, marker: Path | None) -> None:
        self.worker = worker
        self.block_at = block_at
        self.marker = marker
        self.calls = 0
        self._counting = threading.Lock()

    @command_handler
    def record(self, command: Step, session: Session) -> None:
        session.execute(
            insert(handled).values(key=command.key, seq=command.seq, worker=self.worker)
        )
        with self._counting:
            self.calls += 1
            blocking = self.calls == self.block_at
        if blocking:
            assert self.marker is not None
            write_atomically(self.marker, json.dumps([command.key, command.seq]))
            while True:
                time.sleep(60)


def build(
    url: str, worker: str = "test", block_at: int | None = None, marker: Path | None = None
) -> Messaging:
    return Messaging(
        handlers=[Recorder(worker, block_at, marker)],
        channels=[SqlChannel(CHANNEL, poll_interval=POLL)],
        database=url,
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
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--block-at", type=int)
    parser.add_argument("--marker", type=Path)
    parser.add_argument("--ready", type=Path, help="write this file when ready to consume")
    parser.add_argument("--go", type=Path, help="then wait for this file before consuming")
    args = parser.parse_args()

    messaging = build(args.url, args.worker, args.block_at, args.marker)
    channel = messaging.channel(CHANNEL)
    channel.depth()  # connected before the start signal
    if args.ready:
        write_atomically(args.ready, "ready")
    if args.go:
        _wait_for(args.go, time.monotonic() + 120)
    handled_count = failed = 0
    # Until the channel is empty, not until a claim comes back empty: a message another
    # worker holds, or one whose key is busy, is not handled yet.
    while channel.depth():
        result = messaging.run(CHANNEL, concurrency=args.concurrency)
        handled_count += result.handled
        failed += result.failed
        if result.reason != "empty":  # stopped by a signal
            break
        time.sleep(POLL)
    messaging.close()
    print(json.dumps({"handled": handled_count, "failed": failed}))
