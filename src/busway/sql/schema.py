"""busway's tables, as SQLAlchemy Core metadata, and the DDL to create them."""

from __future__ import annotations

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
)
from sqlalchemy.dialects import mysql

# BIGINT on PostgreSQL and MariaDB; INTEGER on SQLite, where only that is a rowid alias.
Sequence = BigInteger().with_variant(Integer(), "sqlite")
Body = LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
LongText = Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


def messages_table(metadata: MetaData, name: str = "busway_messages") -> Table:
    """Messages waiting on SQL channels, one table shared by every channel of a database.

    ``available_at`` (milliseconds since the epoch) is when a message may be taken: the send
    time, a delay's end, or, in lease mode, when an unfinished claim expires, or when a
    message whose send on failed is tried again. ``queued_at`` is when it was first due, and
    never moves: the age of the oldest message counts from there. The index serves the
    dequeue exactly: one channel, available now, oldest first.
    """
    return Table(
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
        Index(f"{name}_dequeue", "channel", "available_at", "seq"),
    )


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
        Index(f"{name}_by_time", "failed_at"),
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
