"""A worker process whose handler kills it on one poisoned command, for the crash-loop tests.

Run as ``python -c "import crash_worker; crash_worker.main()" URL NAME --poison ID [options]``
with this folder on ``PYTHONPATH``. Each ``Record`` command writes its business row and counts
itself, as ``sql_worker``'s do; the poisoned one writes its row, then ends the process with
``os._exit(1)`` before anything commits. The worker consumes the ``work`` channel until its
table is empty, waiting out the leases of dead workers in ``lease`` mode.
"""

import argparse
import asyncio
import os
import time

from sql_worker import Record, counters, handled
from sqlalchemy import insert, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from busway import Messaging, RetryPolicy, SqlChannel, command_handler

POLL = 0.05


class Recorder:
    def __init__(self, worker: str, poison: int | None) -> None:
        self.worker = worker
        self.poison = poison

    @command_handler
    def record(self, command: Record, session: Session) -> None:
        session.execute(insert(handled).values(id=command.id, worker=self.worker))
        session.execute(
            update(counters).where(counters.c.worker == self.worker).values(n=counters.c.n + 1)
        )
        if command.id == self.poison:
            os._exit(1)


class AsyncRecorder:
    def __init__(self, worker: str, poison: int | None) -> None:
        self.worker = worker
        self.poison = poison

    @command_handler
    async def record(self, command: Record, session: AsyncSession) -> None:
        await session.execute(insert(handled).values(id=command.id, worker=self.worker))
        await session.execute(
            update(counters).where(counters.c.worker == self.worker).values(n=counters.c.n + 1)
        )
        if command.id == self.poison:
            os._exit(1)


def build(
    url: str,
    worker: str = "test",
    poison: int | None = None,
    mode: str = "transaction",
    visibility_timeout: float = 1.0,
    asynchronous: bool = False,
    max_crashes: int | None = 3,
) -> Messaging:
    recorder = (AsyncRecorder if asynchronous else Recorder)(worker, poison)
    return Messaging(
        handlers=[recorder],
        channels=[SqlChannel("work", mode=mode, visibility_timeout=visibility_timeout)],  # type: ignore[arg-type]
        database=url,
        retry=RetryPolicy(retries=0),
        max_crashes=max_crashes,
    )


async def _drain(messaging: Messaging) -> None:
    channel = messaging.channel("work")
    try:
        while await asyncio.to_thread(channel.depth):
            await messaging.arun("work")
            await asyncio.sleep(POLL)  # a dead worker's lease runs out
    finally:
        await messaging.aclose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("worker")
    parser.add_argument("--poison", type=int)
    parser.add_argument("--mode", default="transaction")
    parser.add_argument("--asyncio", action="store_true")
    parser.add_argument("--max-crashes", type=int, default=3)
    args = parser.parse_args()

    messaging = build(
        args.url,
        args.worker,
        args.poison,
        args.mode,
        asynchronous=args.asyncio,
        max_crashes=args.max_crashes,
    )
    with messaging.transaction() as session:
        session.execute(insert(counters).values(worker=args.worker, n=0))
    if args.asyncio:
        asyncio.run(_drain(messaging))
        return
    channel = messaging.channel("work")
    while channel.depth():
        messaging.run("work")
        time.sleep(POLL)  # a dead worker's lease runs out
    messaging.close()
