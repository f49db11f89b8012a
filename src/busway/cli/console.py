"""What the commands write: tables, a live status line on a terminal, logs otherwise."""

from __future__ import annotations

import datetime
import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import IO, Any

import click

from busway.worker import RunResult

log = logging.getLogger("busway.cli")

PROGRESS_LOG_INTERVAL = 10.0
STATUS_REDRAW_INTERVAL = 0.1


class StatusLine:
    """One line on a terminal, redrawn in place: handled, failed and rate."""

    def __init__(self, stream: IO[str], label: str) -> None:
        self.stream = stream
        self.label = label
        self.lock = threading.Lock()
        self._drawn = 0.0
        self._visible = False

    def update(self, result: RunResult) -> None:
        now = time.monotonic()
        with self.lock:
            if now - self._drawn >= STATUS_REDRAW_INTERVAL:
                self._drawn = now
                self._draw(result)

    def clear(self) -> None:
        """Make room for a log line (call with ``lock`` held); the next update redraws."""
        if self._visible:
            self.stream.write("\r\x1b[K")
            self._visible = False

    def finish(self, result: RunResult) -> None:
        with self.lock:
            self._draw(result)
            self.stream.write("\n")
            self.stream.flush()
            self._visible = False

    def _draw(self, result: RunResult) -> None:
        self.stream.write(f"\r\x1b[K{self.label}  {progress_text(result)}")
        self.stream.flush()
        self._visible = True


class ProgressLog:
    """Progress as a log line at most every ``PROGRESS_LOG_INTERVAL`` seconds."""

    def __init__(self) -> None:
        self._logged = time.monotonic()
        self._lock = threading.Lock()

    def update(self, result: RunResult) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._logged < PROGRESS_LOG_INTERVAL:
                return
            self._logged = now
        log.info("progress: %s", progress_text(result), extra=fields(result))


def progress_text(result: RunResult) -> str:
    return f"handled {result.handled}  failed {result.failed}  {rate(result):.1f} msg/s"


def rate(result: RunResult) -> float:
    elapsed = result.elapsed
    return result.handled / elapsed if elapsed > 0 else 0.0


def fields(result: RunResult, **more: Any) -> dict[str, Any]:
    """``extra=`` for a log call: the run's figures as structured fields."""
    values = {
        "handled": result.handled,
        "failed": result.failed,
        "rate": round(rate(result), 1),
        "elapsed": round(result.elapsed, 3),
    }
    return {"fields": {**more, **values}}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TerminalHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Plain log lines that step around the status line."""

    def __init__(self, stream: IO[str], status: StatusLine | None = None) -> None:
        super().__init__(stream)
        self.status = status
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if self.status is None:
            super().emit(record)
            return
        with self.status.lock:
            self.status.clear()
            super().emit(record)


def configure_logging(stream: IO[str], status: StatusLine | None = None) -> None:
    """Send busway's logs to ``stream``, unless the application configured logging itself."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler: logging.Handler
    if stream.isatty():
        handler = TerminalHandler(stream, status)
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    logging.getLogger("busway").setLevel(logging.INFO)


def table(rows: Sequence[Sequence[str]]) -> None:
    """Columns padded to their widest cell, the first row being the header."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def when(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
