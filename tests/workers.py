"""Worker processes for the tests that kill them: start one, wait for its marker, SIGKILL it.

A worker script (``amqp_worker``, ``redis_worker``, ...) lives next to its tests and writes a
marker file at the moment a test wants it killed; ``kill_when`` waits for that file, then
kills the process with SIGKILL, for real.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest


def start_worker(folder: Path, module: str, *args: str) -> subprocess.Popen[str]:
    """A process running ``module.main()`` from ``folder`` with ``args`` on its command line."""
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(folder), *sys.path]))
    return subprocess.Popen(
        [sys.executable, "-c", f"import {module}; {module}.main()", *args],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(worker: subprocess.Popen[str], timeout: float = 60) -> str:
    """Wait for ``worker`` to end well; what it printed."""
    out, errors = worker.communicate(timeout=timeout)
    assert worker.returncode == 0, errors
    return out


def kill_when(marker: Path, worker: subprocess.Popen[str], timeout: float = 30) -> str:
    """Wait for ``worker`` to write ``marker``, then kill it with SIGKILL; what it wrote."""
    deadline = time.monotonic() + timeout
    try:
        while not marker.exists():
            if worker.poll() is not None:
                _, errors = worker.communicate()
                pytest.fail(f"the worker exited ({worker.returncode}) too early:\n{errors}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for the worker to write {marker.name}")
            time.sleep(0.01)
    finally:
        if worker.poll() is None:  # a worker that exited early is reported as such
            os.kill(worker.pid, signal.SIGKILL)
            worker.communicate(timeout=30)
    assert worker.returncode == -signal.SIGKILL
    return marker.read_text()


def deaths_until_drained(start: Callable[[int], subprocess.Popen[str]], bound: int) -> int:
    """Start a worker (``start(restart)``) again each time one dies of ``os._exit(1)``, until
    one drains its channel and exits 0; how many died. Fails past ``bound + 3`` deaths."""
    deaths = 0
    for restart in range(bound + 3):
        worker = start(restart)
        _, errors = worker.communicate(timeout=120)
        if worker.returncode == 0:
            return deaths
        assert worker.returncode == 1, errors  # os._exit(1) in the poisoned handler
        deaths += 1
    pytest.fail(f"workers died {deaths} times and the channel is still not drained")
