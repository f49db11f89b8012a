"""busway's tables, as SQLAlchemy Core metadata, and the DDL to create them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects import mysql

# BIGINT on PostgreSQL and MariaDB; INTEGER on SQLite, where only that is a rowid alias.
Sequence = BigInteger().with_variant(Integer(), "sqlite")
Body = LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
LongText = Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


def messages_table(
    metadata: MetaData, name: str = "busway_messages", *, priorities: bool = False
) -> Table:
    """Messages waiting on SQL channels, one table shared by every channel of a database.

    ``available_at`` (milliseconds since the epoch) is when a message may be taken: the send
    time, a delay's end, or, in lease mode, when an unfinished claim expires, or when a
    message whose send on failed is tried again. ``queued_at`` is when it was first due, and
    never moves: the age of the oldest message counts from there. The dequeue index serves the
    claim exactly: one channel, available now, oldest first.

    ``ordering_key`` is the message's key, if it has one (``busway.ordering``); ``position``
    its place among the messages of its key when that is not its ``seq``: a retry or a
    replayed dead letter keeps the ``seq`` of the message it repeats. The key indexes hold
    keyed rows only, where the database can say so. ``priority`` orders the claim of a
    channel made with ``priorities=True``, whose own index is then made.
    """
    keyed = {
        "postgresql_where": "ordering_key IS NOT NULL",
        "sqlite_where": "ordering_key IS NOT NULL",
    }
    placed = {"postgresql_where": "position IS NOT NULL", "sqlite_where": "position IS NOT NULL"}
    table = Table(
        name,
        metadata,
        Column("seq", Sequence, primary_key=True, autoincrement=True),
        Column("channel", String(200), nullable=False),
        Column("available_at", BigInteger, nullable=False),
        Column("queued_at", BigInteger, nullable=False),
        Column("message_id", String(64), nullable=False),
        Column("headers", LongText, nullable=False),
        Column("body", Body, nullable=False),
        Column("deliveries", Integer, nullable=False, default=0),
        Column("ordering_key", String(200), nullable=True),
        Column("position", BigInteger, nullable=True),
        Column("priority", Integer, nullable=False, default=0, server_default=text("0")),
        Index(f"{name}_dequeue", "channel", "available_at", "seq"),
        Index(f"{name}_by_key", "channel", "ordering_key", "seq", **_where(keyed)),
        Index(f"{name}_by_position", "channel", "ordering_key", "position", **_where(placed)),
    )
    if priorities:
        Index(
            f"{name}_by_priority",
            table.c.channel,
            table.c.priority.desc(),
            table.c.available_at,
            table.c.seq,
        )
    return table


def _where(conditions: dict[str, str]) -> dict[str, Any]:
    return {dialect: text(condition) for dialect, condition in conditions.items()}


def in_hand_table(metadata: MetaData, name: str = "busway_messages_in_hand") -> Table:
    """Messages a ``transaction``-mode worker has taken in hand, noted outside the batch's
    transaction: ``taken`` counts the deliveries begun and not yet ended, so a row found at a
    claim is a worker that died with the message in hand. The acknowledgement deletes the row
    with its message. No foreign key: noting a message must not wait for the lock its batch
    holds on the message's row."""
    return Table(
        name,
        metadata,
        Column("seq", Sequence, primary_key=True, autoincrement=False),
        Column("channel", String(200), nullable=False),
        Column("taken", Integer, nullable=False),
    )


def dead_letters_table(metadata: MetaData, name: str = "busway_dead_letters") -> Table:
    return Table(
        name,
        metadata,
        Column("id", String(64), primary_key=True),
        Column("channel", String(200), nullable=False),
        Column("handler", String(500), nullable=True),
        Column("message_id", String(64), nullable=True),
        Column("headers", LongText, nullable=False),
        Column("body", Body, nullable=False),
        Column("error_type", String(500), nullable=False),
        Column("error_message", LongText, nullable=False),
        Column("traceback", LongText, nullable=False),
        Column("attempts", Integer, nullable=False),
        Column("failed_at", Double, nullable=False),
        Column("ordering_key", String(200), nullable=True),
        Index(f"{name}_by_time", "failed_at"),
        Index(f"{name}_by_key", "channel", "ordering_key"),
    )


def inbox_table(metadata: MetaData, name: str = "busway_inbox") -> Table:
    """Which handler has taken effect for which message: the deduplication record."""
    return Table(
        name,
        metadata,
        Column("message_key", String(200), nullable=False),
        Column("handler", String(500), nullable=False),
        Column("handled_at", BigInteger, nullable=False),
        UniqueConstraint("message_key", "handler", name=f"{name}_once"),
        Index(f"{name}_by_time", "handled_at"),
    )


def workers_table(metadata: MetaData, name: str = "busway_workers") -> Table:
    """The last heartbeat of each running worker (``busway.liveness``); times in seconds
    since the epoch, ``channels`` a JSON list."""
    return Table(
        name,
        metadata,
        Column("worker_id", String(64), primary_key=True),
        Column("host", String(255), nullable=False),
        Column("pid", Integer, nullable=False),
        Column("channels", LongText, nullable=False),
        Column("started", Double, nullable=False),
        Column("last_beat", Double, nullable=False),
        Column("beat_interval", Double, nullable=False),
        Column("handled", BigInteger, nullable=False),
        Column("failed", BigInteger, nullable=False),
    )
