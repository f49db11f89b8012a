"""Workers' heartbeats in ``busway_workers``, a table of the messaging database."""

from __future__ import annotations

from typing import Any

import msgspec
from sqlalchemy import MetaData, Table, delete, insert, select, update

from busway.liveness import Heartbeat
from busway.sql.creating import create_table, has_table, set_up
from busway.sql.database import Database
from busway.sql.schema import workers_table

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(list[str]).decode


class SqlHeartbeatStore:
    """The heartbeat store of an application with a database: every worker process of the
    application, on any host, beats into the same table."""

    def __init__(self, database: Database, table: str = "busway_workers") -> None:
        self.database = database
        self.table: Table = workers_table(MetaData(), table)
        database.tables.add(table)

    def setup(self) -> None:
        set_up(self.database, has_table(self.table), create_table(self.table))

    def beat(self, heartbeat: Heartbeat) -> None:
        table = self.table
        row = _row(heartbeat)
        with self.database.engine.begin() as connection:
            changed = connection.execute(
                update(table).where(table.c.worker_id == heartbeat.worker_id).values(row)
            )
            if not changed.rowcount:  # the first beat, or the row was forgotten meanwhile
                connection.execute(insert(table).values(worker_id=heartbeat.worker_id, **row))

    def remove(self, worker_id: str) -> None:
        with self.database.engine.begin() as connection:
            connection.execute(delete(self.table).where(self.table.c.worker_id == worker_id))

    def list(self) -> list[Heartbeat]:
        query = select(self.table).order_by(self.table.c.started, self.table.c.worker_id)
        with self.database.reading() as connection:
            return [_heartbeat(row) for row in connection.execute(query)]

    def forget(self, before: float) -> int:
        with self.database.engine.begin() as connection:
            gone = connection.execute(delete(self.table).where(self.table.c.last_beat < before))
        return int(gone.rowcount)


def _row(heartbeat: Heartbeat) -> dict[str, Any]:
    return {
        "host": heartbeat.host[:255],
        "pid": heartbeat.pid,
        "channels": _encode(list(heartbeat.channels)).decode(),
        "started": heartbeat.started,
        "last_beat": heartbeat.last_beat,
        "beat_interval": heartbeat.interval,
        "handled": heartbeat.handled,
        "failed": heartbeat.failed,
    }


def _heartbeat(row: Any) -> Heartbeat:
    try:
        channels = tuple(_decode(row.channels))
    except msgspec.DecodeError:  # a row changed by hand: show what it says
        channels = (str(row.channels),)
    return Heartbeat(
        worker_id=row.worker_id,
        host=row.host,
        pid=row.pid,
        channels=channels,
        started=row.started,
        last_beat=row.last_beat,
        interval=row.beat_interval,
        handled=row.handled,
        failed=row.failed,
    )
