"""A claim that meets another transaction's locks before it claimed anything is tried
again, a few times in a row at most; a lost connection before a claim is left to the worker,
which waits the outage out."""

from __future__ import annotations

import sqlite3

import psycopg
import pymysql
import pytest
from sqlalchemy.exc import OperationalError

from busway.sql.redo import MAX_LOST, Redo, conflicted


def mariadb_error(code: int, text: str) -> OperationalError:
    return OperationalError(
        "SELECT ... FOR UPDATE SKIP LOCKED", {}, pymysql.err.OperationalError(code, text)
    )


def postgresql_error(error: type[psycopg.Error]) -> OperationalError:
    return OperationalError("SELECT ... FOR UPDATE SKIP LOCKED", {}, error("conflict"))


def sqlite_busy() -> OperationalError:
    original = sqlite3.OperationalError("database is locked")
    original.sqlite_errorcode = sqlite3.SQLITE_BUSY  # type: ignore[attr-defined]
    return OperationalError("BEGIN IMMEDIATE", {}, original)


@pytest.mark.parametrize(
    "error",
    [
        mariadb_error(1213, "Deadlock found when trying to get lock; try restarting transaction"),
        mariadb_error(1205, "Lock wait timeout exceeded; try restarting transaction"),
        postgresql_error(psycopg.errors.DeadlockDetected),
        postgresql_error(psycopg.errors.SerializationFailure),
        sqlite_busy(),
    ],
    ids=[
        "mariadb-deadlock",
        "mariadb-lock-wait",
        "postgresql-deadlock",
        "serialization",
        "sqlite-busy",
    ],
)
def test_a_claim_that_met_another_transactions_locks_is_tried_again(
    error: OperationalError,
) -> None:
    assert conflicted(error)
    redo = Redo("jobs", isolated=True)
    pauses = [redo.after(error) for _ in range(MAX_LOST)]
    assert all(0 < pause < 1 for pause in pauses)
    with pytest.raises(OperationalError):  # one too many in a row: the worker's to wait out
        redo.after(error)


def test_a_connection_lost_before_the_claim_is_left_to_the_worker() -> None:
    lost = mariadb_error(2013, "Lost connection to server during query")
    assert not conflicted(lost)
    with pytest.raises(OperationalError):
        Redo("jobs", isolated=True).after(lost)


def test_an_error_that_is_no_conflict_is_left_to_the_worker() -> None:
    with pytest.raises(ValueError):
        Redo("jobs", isolated=True).after(ValueError("not the database"))
