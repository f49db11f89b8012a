"""Running the ``busway`` command as a real process, and reading what it wrote."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any


def busway_executable() -> str:
    found = shutil.which("busway", path=str(Path(sys.executable).parent)) or shutil.which("busway")
    assert found, "the busway console script is not installed next to this Python"
    return found


def busway(
    directory: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key != "BUSWAY_APP"}
    environment.update(env or {})
    return subprocess.run(
        [busway_executable(), *args],
        cwd=directory,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def log_lines(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def read_all(fd: int) -> str:
    """Everything written to a terminal's other end, until it closes."""
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the terminal's other end is closed and drained
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()
