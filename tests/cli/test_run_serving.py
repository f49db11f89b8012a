"""What a ``busway run`` process does beside consuming: it serves the metrics at
``--metrics-port`` and fires the application's schedules. On a SQLite file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import busway, busway_executable
from prometheus_client.parser import text_string_to_metric_families

APP = """
from dataclasses import dataclass
from pathlib import Path

from busway import (
    CommandBus, Messaging, RetryPolicy, SqlChannel, asynchronous, command_handler,
)
from busway.metrics import Metrics
from busway.schedules import Schedule

HERE = Path(__file__).parent


@dataclass
class Label:
    parcel: str


@dataclass
class Sweep:
    pass


@asynchronous("labels")
class Labels(CommandBus):
    pass


@command_handler
def label(command: Label) -> None:
    if command.parcel == "torn":
        raise ValueError("a torn parcel")
    print(f"labelled {command.parcel}", flush=True)


@command_handler
@asynchronous("labels")
def sweep(command: Sweep) -> None:
    print("swept", flush=True)


messaging = Messaging(
    handlers=[label, sweep],
    channels=[SqlChannel("labels")],
    database=f"sqlite:///{HERE / 'depot.db'}",
    retry=RetryPolicy(retries=1, initial_delay=0, jitter=0),
    instruments=[Metrics()],
    schedules=[Schedule("sweep", Sweep(), every=1)] if SCHEDULED else [],
)


def send(*parcels: str) -> None:
    bus = messaging.gateway(Labels)
    for parcel in parcels:
        bus.send(Label(parcel))
    messaging.close()
"""

APP_OPTION = ("--app", "labels_app:messaging")


def write_app(directory: Path, scheduled: bool) -> Path:
    (directory / "labels_app.py").write_text(APP.replace("SCHEDULED", str(scheduled)))
    assert busway(directory, "setup", *APP_OPTION).returncode == 0
    return directory


def send(directory: Path, *parcels: str) -> None:
    code = f"import labels_app; labels_app.send(*{parcels!r})"
    subprocess.run([sys.executable, "-c", code], cwd=directory, check=True, timeout=60)


@pytest.fixture
def worker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A ``busway run`` process; the parameter: whether the app has its schedule, and
    options."""
    scheduled, *args = request.param
    write_app(tmp_path, scheduled)
    process = subprocess.Popen(
        [busway_executable(), "run", "labels", *APP_OPTION, *args],
        cwd=tmp_path,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.parametrize("worker", [(False, "--metrics-port", "0")], indirect=True)
def test_a_running_worker_serves_its_metrics(tmp_path: Path, worker: subprocess.Popen[str]) -> None:
    assert worker.stderr is not None and worker.stdout is not None
    served = None
    while served is None:
        line = json.loads(worker.stderr.readline())
        if line["message"].startswith("metrics on http://127.0.0.1:"):
            served = line["metrics_port"]
    send(tmp_path, "box", "torn", "crate")
    handled = sorted([worker.stdout.readline(), worker.stdout.readline()])
    assert handled == ["labelled box\n", "labelled crate\n"]

    key = (("channel", "labels"), ("handler", "labels_app.label"))
    failed = (("channel", "labels"), ("error_type", "builtins.ValueError"), key[1])
    seen = scrape(served)
    while seen.get(("busway_messages_dead_lettered_total", failed)) != 1:
        assert worker.poll() is None, worker.communicate()[1]
        seen = scrape(served)

    assert seen[("busway_messages_handled_total", key)] == 2
    assert seen[("busway_messages_failed_total", failed)] == 2  # the try and its retry
    assert seen[("busway_messages_retried_total", key)] == 1
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0


@pytest.mark.parametrize("worker", [(True,)], indirect=True)
def test_a_running_worker_fires_the_schedules(
    tmp_path: Path, worker: subprocess.Popen[str]
) -> None:
    assert worker.stdout is not None

    assert worker.stdout.readline() == "swept\n"
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0


def test_metrics_port_without_metrics_is_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "bare.py").write_text(
        "from busway import Messaging, SqlChannel\n"
        "messaging = Messaging(channels=[SqlChannel('labels')], database='sqlite:///b.db')\n"
    )
    done = busway(tmp_path, "run", "labels", "--app", "bare:messaging", "--metrics-port", "0")

    assert done.returncode == 2
    assert "--metrics-port: this application counts no metrics; pass Messaging(" in done.stderr
