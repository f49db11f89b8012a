"""A worker process for the NATS tests, and the application it runs.

Run as ``python -c "import nats_worker; nats_worker.main()" URL STREAM DATABASE [options]``
with this folder on ``PYTHONPATH``: it consumes the ``work`` channel, a NATS stream, and each
``Record`` command inserts a row under a unique constraint on the record's id, through the
handler's Session. With ``--block-at N`` the N-th handler call writes its row, writes the
marker file and waits there, uncommitted, to be killed.
"""

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Column, Integer, MetaData, Table, insert
from sqlalchemy.orm import Session

from busway import CommandBus, Messaging, RetryPolicy, asynchronous, command_handler
from busway.nats import NatsChannel


@dataclass
class Record:
    id: int


@asynchronous("work")
class WorkBus(CommandBus):
    """Commands sent here wait on the ``work`` NATS channel for a worker process."""


metadata = MetaData()
effects = Table("test_nats_effects", metadata, Column("id", Integer, primary_key=True))


class Recorder:
    def __init__(self, block_at: int | None = None, marker: Path | None = None) -> None:
        self.block_at = block_at
        self.marker = marker
        self.calls = 0

    @command_handler
    def record(self, command: Record, session: Session) -> None:
        session.execute(insert(effects).values(id=command.id))
        self.calls += 1
        if self.calls == self.block_at:
            assert self.marker is not None
            self.marker.write_text(str(command.id))
            while True:
                time.sleep(60)


def build(
    url: str,
    stream: str,
    database: str,
    block_at: int | None = None,
    marker: Path | None = None,
    ack_wait: float = 1.0,
) -> Messaging:
    channel = NatsChannel(
        "work", url, stream=stream, subject=f"{stream}.work", ack_wait=ack_wait, batch_size=10
    )
    return Messaging(
        handlers=[Recorder(block_at, marker)],
        channels=[channel],
        database=database,
        retry=RetryPolicy(retries=0),  # a repeated effect would fail on the unique id: keep it
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("stream")
    parser.add_argument("database")
    parser.add_argument("--block-at", type=int)
    parser.add_argument("--marker", type=Path)
    args = parser.parse_args()
    messaging = build(args.url, args.stream, args.database, args.block_at, args.marker)
    messaging.run("work", until_empty=False, time_limit=60)
    messaging.close()
