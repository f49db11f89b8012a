"""What a ``SqlChannel`` batch decides without I/O: the failure of one handler that ends it,
what it keeps back when its sends on fail, and whether it was given up."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row

from busway.channels.base import Unsent
from busway.sql.transactions import Transaction

log = logging.getLogger("busway.sql")


class HandlerFailed(Exception):
    """The handler of the message ``seq`` failed in a batch run without savepoints: the batch
    is rolled back and redone, that message dealt with at once."""

    def __init__(self, seq: int, error: BaseException) -> None:
        super().__init__(seq)
        self.seq = seq
        self.error = error


def after_commit(transaction: Transaction, handled: int, unsent: Unsent | None) -> int:
    for callback in transaction.after_commit:
        callback()
    if unsent is not None:
        raise unsent.error
    return handled


def kept_back(
    channel: str, unsent: Unsent | None, rows: Sequence[Row[Any]], done: list[int]
) -> list[Row[Any]]:
    """The rows of the messages ``unsent`` names, taken out of ``done``."""
    if unsent is None:
        return []
    kept = [row for row in rows if row.seq in unsent.keys]
    seqs = {row.seq for row in kept}
    done[:] = [seq for seq in done if seq not in seqs]
    log.warning(
        "channel %r: %d message(s) not sent on, kept back for a later try: %s",
        channel,
        len(kept),
        unsent.error,
    )
    return kept


GIVEN_UP = (
    "busway: the batch was given up after the database ended its transaction again and "
    "again; nothing of it was acknowledged"
)
"""The note on the error of a batch given up: it was tried on new connections already."""


def given_up(error: BaseException) -> bool:
    return GIVEN_UP in getattr(error, "__notes__", ())


class StaleClaim(Exception):
    """The claim failed on a pooled connection a server restart broke: nothing was handed
    out, so the claim can be made again at once on a new connection."""
