"""A worker process for the NATS tests, and the application it runs.

Run as ``python -c "import nats_worker; nats_worker.main()" ROLE URL STREAM DATABASE
[options]`` with this folder on ``PYTHONPATH``. Role ``consume`` consumes the ``work``
channel, a NATS stream; role ``relay`` runs the ``outbox`` channel, which forwards to it.
Each ``Record`` command inserts a row under a unique constraint on the record's id, through
the handler's Session; the database's inbox must absorb every message delivered twice.

``--block-at N`` makes the process stop for good at the Nth message (consumer: inside the
handler, its row written and not committed; relay: once JetStream acknowledged the batch of
its Nth send, before the outbox rows are deleted), after writing ``--marker``: the test
kills it there. Role ``drain`` consumes until nothing is left, what dead consumers left
unacknowledged included; ``--poison ID`` makes the handler of that record end the process
with ``os._exit(1)``.
"""

import argparse
import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Integer, MetaData, Table, insert
from sqlalchemy.orm import Session

from busway import CommandBus, Messaging, RetryPolicy, SqlChannel, asynchronous, command_handler
from busway.channels.base import Envelope, current_batch
from busway.nats import NatsChannel
from markers import write_atomically


@dataclass
class Record:
    id: int


@asynchronous("work")
class WorkBus(CommandBus):
    """Commands sent here wait on the ``work`` NATS channel for a worker process."""


@asynchronous("outbox", "work")
class OutboxWorkBus(CommandBus):
    """Commands committed to the outbox, then relayed to the ``work`` NATS channel."""


metadata = MetaData()
effects = Table("test_nats_effects", metadata, Column("id", Integer, primary_key=True))


def _block(marker: Path | None, text: str) -> None:
    assert marker is not None
    write_atomically(marker, text)
    while True:
        time.sleep(60)


class Recorder:
    def __init__(
        self, block_at: int | None = None, marker: Path | None = None, poison: int | None = None
    ) -> None:
        self.poison = poison
        self.block_at = block_at
        self.marker = marker
        self.calls = 0

    @command_handler
    def record(self, command: Record, session: Session) -> None:
        if command.id == self.poison:
            os._exit(1)  # a handler that kills its worker, as a segfault would
        session.execute(insert(effects).values(id=command.id))
        self.calls += 1
        if self.calls == self.block_at:
            _block(self.marker, str(command.id))


class BlockingRelayChannel(NatsChannel):
    """Stops for good once JetStream acknowledged the batch of its Nth send, before the outbox
    commits (a sync relay: ``asend`` is left as it is)."""

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
            # After the channel's own callback, which waits for the batch's publish acks.
            batch.before_ack.append(lambda: _block(self.marker, "acknowledged"))


def build(
    url: str,
    stream: str,
    database: str,
    block_at: int | None = None,
    marker: Path | None = None,
    ack_wait: float = 1.0,
    relay_block_at: int | None = None,
    *,
    batch_size: int = 10,
    poison: int | None = None,
    max_crashes: int | None = 3,
) -> Messaging:
    options: dict[str, Any] = {
        "stream": stream,
        "subject": f"{stream}.work",
        "ack_wait": ack_wait,
        "batch_size": batch_size,
    }
    channel = (
        BlockingRelayChannel("work", url, block_at=relay_block_at, marker=marker, **options)
        if relay_block_at is not None
        else NatsChannel("work", url, **options)
    )
    return Messaging(
        handlers=[Recorder(block_at, marker, poison)],
        channels=[SqlChannel("outbox"), channel],
        database=database,
        retry=RetryPolicy(retries=0),  # a repeated effect would fail on the unique id: keep it
        max_crashes=max_crashes,
    )


def drain(messaging: Messaging, asynchronously: bool) -> None:
    """Consume ``work`` until nothing is left, what dead consumers left unacknowledged too."""
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
    parser.add_argument("url")
    parser.add_argument("stream")
    parser.add_argument("database")
    parser.add_argument("--block-at", type=int)
    parser.add_argument("--marker", type=Path)
    parser.add_argument("--poison", type=int)
    parser.add_argument("--max-crashes", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--asyncio", action="store_true")
    args = parser.parse_args()
    if args.role == "drain":
        messaging = build(
            args.url, args.stream, args.database, batch_size=args.batch_size,
            poison=args.poison, max_crashes=args.max_crashes,
        )  # fmt: skip
        drain(messaging, args.asyncio)
    elif args.role == "relay":
        messaging = build(
            args.url, args.stream, args.database, marker=args.marker, relay_block_at=args.block_at
        )
        messaging.run("outbox")
    else:
        messaging = build(args.url, args.stream, args.database, args.block_at, args.marker)
        messaging.run("work", until_empty=False, time_limit=60)
    messaging.close()
