"""The logs of ``busway run``: every logger at ``--log-level`` (INFO by default), as JSON
lines for log collectors, or as readable lines on a terminal.

A record's structured fields are the attributes ``extra=`` gave it (``channel``, ``handler``,
``message_id``, ...), and the entries of an ``extra={"fields": {...}}`` mapping; both outputs
show them all. The entries of ``extra={"figures": {...}}`` are figures the message states
already: only the JSON lines repeat them, for collectors to read.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Mapping
from typing import IO, Any

from busway.cli.console import StatusLine

LEVELS = ("debug", "info", "warning", "error", "critical")
EACH_MESSAGE_LOGGER = "busway.messages"

_STANDARD = {
    *vars(logging.LogRecord("", 0, "", 0, "", None, None)),
    "message",
    "asctime",
    "taskName",
}
_NESTED = ("fields", "figures")
_JSON_ONLY = "figures"


def structured(record: logging.LogRecord, *, figures: bool = True) -> dict[str, Any]:
    """The fields ``extra=`` gave ``record``; ``figures``: with the JSON-only ones."""
    found: dict[str, Any] = {}
    for key, value in vars(record).items():
        if key in _STANDARD or key.startswith("_"):
            continue
        if key in _NESTED:
            if isinstance(value, Mapping) and (figures or key != _JSON_ONLY):
                found.update(value)
            continue
        found[key] = value
    return found


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in structured(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class ReadableFormatter(logging.Formatter):
    """``12:00:01 WARNING busway: message  channel=orders handler=shop.place``."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        line = f"{moment} {record.levelname} {record.name}: {record.getMessage()}"
        fields = structured(record, figures=False)
        if fields:
            line += "  " + " ".join(f"{key}={_shown(value)}" for key, value in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return json.dumps(text) if not text or any(c.isspace() or c == '"' for c in text) else text


class TerminalHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Readable log lines that step around the status line."""

    def __init__(self, stream: IO[str], status: StatusLine | None = None) -> None:
        super().__init__(stream)
        self.status = status
        self.setFormatter(ReadableFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        if self.status is None:
            super().emit(record)
            return
        with self.status.lock:
            self.status.clear()
            super().emit(record)


def configure_logging(
    stream: IO[str],
    status: StatusLine | None = None,
    level: str | None = None,
    each_message: bool = False,
) -> None:
    """Send every logger's records at ``level`` (INFO if None) and above to ``stream``.

    An application that configured logging itself keeps its handlers and levels, unless
    ``level`` is given. ``each_message``: a line per message handled, at any level.
    """
    root = logging.getLogger()
    if each_message:
        logging.getLogger(EACH_MESSAGE_LOGGER).setLevel(logging.DEBUG)
    if root.handlers:
        if level is not None:
            root.setLevel(level.upper())
        return
    handler: logging.Handler
    if stream.isatty():
        handler = TerminalHandler(stream, status)
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel((level or "info").upper())
