"""What the commands write: tables, and a run's progress (a live status line on a terminal,
a log line now and then otherwise). The log lines themselves are ``busway.cli.logs``'."""

from __future__ import annotations

import datetime
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
    return (
        f"handled {result.handled}  failed {result.failed}  retried {result.retried}  "
        f"dead-lettered {result.dead_lettered}  {rate(result):.1f} msg/s"
    )


def summary_text(result: RunResult) -> str:
    """The last line of a run: what it handled, and what became of the failures."""
    text = f"stopped ({result.reason}) after {result.elapsed:.2f}s: handled {result.handled}"
    if result.failed:
        text += (
            f", {result.handled - result.failed} succeeded, {result.failed} failed "
            f"({result.retried} retried later, {result.dead_lettered} dead-lettered)"
        )
    return text


def rate(result: RunResult) -> float:
    elapsed = result.elapsed
    return result.handled / elapsed if elapsed > 0 else 0.0


def fields(result: RunResult, **more: Any) -> dict[str, Any]:
    """``extra=`` for a log call: the run's figures, as fields of its JSON line only (the
    line's text states them)."""
    values = {
        "handled": result.handled,
        "failed": result.failed,
        "retried": result.retried,
        "dead_lettered": result.dead_lettered,
        "rate": round(rate(result), 1),
        "elapsed": round(result.elapsed, 3),
    }
    return {"figures": {**more, **values}}


def table(rows: Sequence[Sequence[str]]) -> None:
    """Columns padded to their widest cell, the first row being the header."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def age_text(seconds: float) -> str:
    """``4.2s``, ``3.5m``, ``2.0h``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def when(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
