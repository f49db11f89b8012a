"""The structured fields of the log records of failures, for log collectors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from busway.message import ATTEMPT, ID, HeaderValue


def error_type(error: BaseException) -> str:
    """The qualified name of ``error``'s class, as dead letters keep it."""
    return f"{type(error).__module__}.{type(error).__qualname__}"


FIELDS = ("channel", "handler", "message_id", "dead_letter_id", "attempt", "error_type")
"""The structured fields of every record of a failure: a retry, a dead letter, a handler
abandoned at its time limit."""


def failure_fields(
    channel: str | None,
    handler: str | None,
    message_id: object,
    attempt: int | None,
    error: BaseException,
    dead_letter_id: str | None = None,
) -> dict[str, Any]:
    """``extra=`` for the log record of a failure: the fields as attributes of the record,
    and under ``fields`` too, where busway's JSON log lines take theirs from."""
    values = dict(
        zip(
            FIELDS,
            (
                channel,
                handler,
                None if message_id is None else str(message_id),
                dead_letter_id,
                attempt,
                error_type(error),
            ),
            strict=True,
        )
    )
    return {**values, "fields": values}


def attempt_in(headers: Mapping[str, HeaderValue]) -> int:
    """The attempt a message's handling is on: one more than the count its headers carry."""
    value = headers.get(ATTEMPT, 0)
    return (value if isinstance(value, int) and not isinstance(value, bool) else 0) + 1


def message_id_in(headers: Mapping[str, HeaderValue]) -> HeaderValue:
    return headers.get(ID)
