"""``busway workers`` and ``busway health`` against real worker processes, on a SQLite file
and on PostgreSQL: a running worker's heartbeat, its silence once SIGKILLed, its removal at a
clean stop, and the exit codes a probe reads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cli_support import busway, busway_executable

APP = """
import os
from dataclasses import dataclass

from busway import CommandBus, Messaging, SqlChannel, asynchronous, command_handler


@dataclass
class Ship:
    parcel: str


@asynchronous("parcels")
class Parcels(CommandBus):
    pass


@command_handler
def ship(command: Ship) -> None:
    print(f"shipped {command.parcel}", flush=True)


messaging = Messaging(
    handlers=[ship],
    channels=[SqlChannel("parcels"), SqlChannel("returns")],
    database=os.environ["DEPOT_DATABASE"],
)


def send(parcel: str) -> None:
    messaging.gateway(Parcels).send(Ship(parcel))
    messaging.close()
"""

BEAT = ("--heartbeat-interval", "0.2s")


class Depot:
    """An application on a database, driven through the ``busway`` command."""

    def __init__(self, directory: Path, database_url: str) -> None:
        self.directory = directory
        self.env = {"DEPOT_DATABASE": database_url}
        (directory / "depot.py").write_text(APP)

    def busway(self, *args: str) -> subprocess.CompletedProcess[str]:
        return busway(self.directory, *args, "--app", "depot:messaging", env=self.env)

    def start_worker(self, *channels: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [busway_executable(), "run", *channels, "--app", "depot:messaging", *BEAT],
            cwd=self.directory,
            env={**os.environ, **self.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def send(self, parcel: str) -> None:
        subprocess.run(
            [sys.executable, "-c", f"import depot; depot.send({parcel!r})"],
            cwd=self.directory,
            env={**os.environ, **self.env},
            check=True,
            timeout=60,
        )

    def workers(self, *options: str) -> dict[int, list[str]]:
        """The rows of ``busway workers``, by pid."""
        listed = self.busway("workers", *options)
        assert listed.returncode == 0, listed.stderr
        header, *rows, count = listed.stdout.splitlines()
        assert header.split() == [
            "ID",
            "HOST",
            "PID",
            "CHANNELS",
            "STARTED",
            "LAST",
            "BEAT",
            "HANDLED",
            "FAILED",
            "STATE",
        ]
        assert count.endswith("silent")
        return {int(row.split()[2]): row.split() for row in rows}


# The SQLite file and PostgreSQL: the conftest's database_url, on these two.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def depot(tmp_path: Path, database_url: str) -> Depot:
    made = Depot(tmp_path, database_url)
    setup = made.busway("setup")
    assert setup.returncode == 0, setup.stderr
    return made


def wait_for(what: str, found: Callable[[], bool], worker: subprocess.Popen[str]) -> None:
    """Ask ``found`` again until it is true; fail if ``worker`` exits or 30 seconds pass."""
    deadline = time.monotonic() + 30
    while not found():
        if worker.poll() is not None and worker.returncode != -signal.SIGKILL:
            _, errors = worker.communicate()
            pytest.fail(
                f"the worker exited ({worker.returncode}) while waiting for {what}:\n{errors}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def running(depot: Depot) -> Iterator[subprocess.Popen[str]]:
    worker = depot.start_worker("parcels")
    try:
        yield worker
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.communicate(timeout=30)


def test_a_running_worker_is_listed_alive_and_the_channel_is_healthy(
    depot: Depot, running: subprocess.Popen[str]
) -> None:
    wait_for("the worker's heartbeat", lambda: running.pid in depot.workers(), running)

    row = depot.workers()[running.pid]
    assert row[3] == "parcels"
    assert row[-1] == "alive"
    healthy = depot.busway("health", "--channel", "parcels")
    assert (healthy.returncode, healthy.stdout.splitlines()[-1]) == (0, "healthy"), healthy
    assert healthy.stdout.splitlines()[1].split() == ["parcels", "0", "-", "1", "ok"]


def test_the_counts_of_a_running_worker_are_in_its_heartbeat(
    depot: Depot, running: subprocess.Popen[str]
) -> None:
    depot.send("p-1")
    depot.send("p-2")
    assert running.stdout is not None
    assert [running.stdout.readline(), running.stdout.readline()] == [
        "shipped p-1\n",
        "shipped p-2\n",
    ]

    wait_for("the handled count", lambda: depot.workers()[running.pid][7] == "2", running)
    assert depot.workers()[running.pid][8] == "0"


def test_a_killed_worker_goes_silent_and_health_says_why(
    depot: Depot, running: subprocess.Popen[str]
) -> None:
    wait_for("the worker's heartbeat", lambda: running.pid in depot.workers(), running)

    os.kill(running.pid, signal.SIGKILL)
    running.wait(timeout=30)
    wait_for(
        "the worker to be marked silent",
        lambda: depot.workers("--silent-after", "1s")[running.pid][-1] == "SILENT",
        running,
    )
    depot.send("p-3")

    def unhealthy() -> subprocess.CompletedProcess[str]:
        return depot.busway("health", "--max-age", "0.05s", "--silent-after", "1s")

    wait_for("the message to be old", lambda: "oldest message is" in unhealthy().stdout, running)
    checked = unhealthy()
    assert checked.returncode == 1
    lines = checked.stdout.splitlines()
    assert lines[1].split()[:2] == ["parcels", "1"]
    assert lines[1].split()[3:] == ["0", "UNHEALTHY"]
    problems = [line for line in lines if line.startswith("unhealthy: ")]
    assert problems[0].startswith("unhealthy: channel 'parcels': its oldest message is ")
    assert problems[0].endswith("s old (more than 0.05s)")
    assert "unhealthy: channel 'parcels': no live worker consumes it" in problems
    assert "unhealthy: channel 'returns': no live worker consumes it" in problems


def test_a_clean_stop_removes_the_heartbeat(depot: Depot, running: subprocess.Popen[str]) -> None:
    wait_for("the worker's heartbeat", lambda: running.pid in depot.workers(), running)

    running.send_signal(signal.SIGTERM)
    _, errors = running.communicate(timeout=60)

    assert running.returncode == 0, errors
    listed = depot.busway("workers")
    assert listed.stdout.splitlines()[-1] == "0 worker(s), 0 silent"


def test_forget_silent_removes_a_dead_workers_heartbeat(
    depot: Depot, running: subprocess.Popen[str]
) -> None:
    wait_for("the worker's heartbeat", lambda: running.pid in depot.workers(), running)
    os.kill(running.pid, signal.SIGKILL)
    running.wait(timeout=30)
    wait_for(
        "the worker to be marked silent",
        lambda: depot.workers("--silent-after", "0.5s")[running.pid][-1] == "SILENT",
        running,
    )

    forgotten = depot.busway("workers", "--forget-silent", "0.5s")

    assert forgotten.stdout.splitlines()[0] == "forgot 1 silent worker(s)"
    assert forgotten.stdout.splitlines()[-1] == "0 worker(s), 0 silent"


def test_health_of_an_unknown_channel_is_a_usage_error(depot: Depot) -> None:
    checked = depot.busway("health", "--channel", "nowhere")

    assert checked.returncode == 2
    assert "no channel is named 'nowhere' (defined: parcels, returns)" in checked.stderr
