"""A worker process with a one-second schedule, for the tests of ticks sent once.

Run as ``python -c "import schedule_worker; schedule_worker.main()" URL SCHEDULE SECONDS``
with this folder on ``PYTHONPATH``: it consumes the schedule's channel for ``SECONDS``
seconds while its scheduler fires; each tick's handler inserts the tick's id into a table
whose primary key is that id.
"""

import sys
from dataclasses import dataclass

from sqlalchemy import Column, MetaData, String, Table, insert
from sqlalchemy.orm import Session

from busway import Message, Messaging, SqlChannel, asynchronous, command_handler
from busway.schedules import TICK, Schedule

metadata = MetaData()
ticks = Table(
    "test_process_ticks",
    metadata,
    Column("tick", String(100), primary_key=True),
    Column("schedule", String(50), nullable=False),
)


@dataclass
class Beat:
    schedule: str


def build(url: str, schedule: str) -> Messaging:
    channel = f"beats-{schedule}"

    @command_handler
    @asynchronous(channel)
    def record(command: Beat, message: Message[Beat], session: Session) -> None:
        session.execute(insert(ticks).values(tick=str(message.headers[TICK]), schedule=schedule))

    return Messaging(
        handlers=[record],
        channels=[SqlChannel(channel, poll_interval=0.05)],
        database=url,
        schedules=[Schedule(schedule, Beat(schedule), every=1)],
    )


def main() -> None:
    url, schedule, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    messaging = build(url, schedule)
    try:
        messaging.run(f"beats-{schedule}", until_empty=False, time_limit=seconds)
    finally:
        messaging.close()
