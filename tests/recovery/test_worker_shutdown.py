"""A worker process stuck in a handler ends on a second signal, or --shutdown-timeout after
the first: exit code 3, nothing acknowledged, every message handled later exactly once."""

import os
import signal
import subprocess
import sys
import time

import pytest
from recovery_app import Job, JobBus
from recovery_support import (
    Process,
    effects,
    environment,
    settled,
    start,
    wait_until,
    waiting,
)

from busway.testing import FakeClock
from busway.worker import EXIT_ABORTED

RUN = ("run", "jobs", "--app", "recovery_app:messaging")
ARUN = (
    "import asyncio, logging, recovery_app; logging.basicConfig(level=logging.INFO); "
    "asyncio.run(recovery_app.messaging.arun('jobs', until_empty=False))"
)


def python(directory, env, *args):
    """Start this Python with ``args``; its output goes to files in ``directory``."""
    stdout, stderr = directory / "python.out", directory / "python.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        popen = subprocess.Popen(
            [sys.executable, *args], cwd=directory, env=env, stdout=out, stderr=err
        )
    return Process(popen, stdout, stderr)


def send_two(messaging):
    with messaging.transaction():  # one commit: a worker claims both in one batch
        messaging.gateway(JobBus).send(Job("a"))
        messaging.gateway(JobBus).send(Job("b"))


def stuck_worker(tmp_path, database_url, mode, *command):
    """A worker process inside the handler of job "a", which never returns."""
    marker = tmp_path / "marker"
    env = environment(url=database_url, mode=mode, worker="stuck", pause="handler", marker=marker)
    worker = start(tmp_path, env, *command)
    wait_until(marker.exists, "the worker is inside the handler", (worker,))
    return worker


def taken_over_exactly_once(messaging, database_url, mode, clock):
    settled(database_url)
    assert effects(database_url) == []  # the stuck handler's write rolled back
    left = waiting(database_url)
    assert len(left) == 2  # nothing acknowledged
    assert all("busway.attempt" not in row.headers for row in left)  # no failure counted
    if mode == "lease":  # the dead worker's lease runs out
        clock.advance(max(row.available_at for row in left) - clock() + 1)
    result = messaging.run("jobs")
    assert (result.handled, result.failed) == (2, 0)
    assert sorted(effects(database_url)) == [("a", "test"), ("b", "test")]
    assert waiting(database_url) == []
    assert messaging.dead_letters.list() == []


@pytest.mark.parametrize("mode", ["transaction", "lease"])
@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_ends_a_worker_stuck_in_a_handler(
    app, database_url, tmp_path, mode, second
):
    clock = FakeClock(time.time())
    messaging = app(mode=mode, clock=clock)
    send_two(messaging)
    worker = stuck_worker(tmp_path, database_url, mode, *RUN)
    try:
        os.kill(worker.pid, signal.SIGTERM)
        wait_until(lambda: "SIGTERM received" in worker.err(), "the first signal is seen")
        assert worker.poll() is None  # still in the handler
        os.kill(worker.pid, second)
        assert worker.wait(30) == EXIT_ABORTED, worker.err()
    finally:
        worker.stop()
    assert f"second signal ({second.name})" in worker.err()
    taken_over_exactly_once(messaging, database_url, mode, clock)


def test_shutdown_timeout_ends_a_worker_stuck_in_a_handler(app, database_url, tmp_path):
    clock = FakeClock(time.time())
    messaging = app(clock=clock)
    send_two(messaging)
    worker = stuck_worker(tmp_path, database_url, "transaction", *RUN, "--shutdown-timeout", "0.2s")
    try:
        os.kill(worker.pid, signal.SIGTERM)
        assert worker.wait(30) == EXIT_ABORTED, worker.err()
    finally:
        worker.stop()
    assert "still stopping 0.2s after SIGTERM" in worker.err()
    taken_over_exactly_once(messaging, database_url, "transaction", clock)


def test_a_second_signal_ends_an_asyncio_worker_whose_loop_a_def_handler_blocks(
    app, database_url, tmp_path
):
    clock = FakeClock(time.time())
    messaging = app(clock=clock)
    send_two(messaging)
    marker = tmp_path / "marker"
    env = environment(url=database_url, worker="stuck", pause="handler", marker=marker)
    worker = python(tmp_path, env, "-c", ARUN)
    try:
        wait_until(marker.exists, "the worker is inside the handler", (worker,))
        os.kill(worker.pid, signal.SIGTERM)
        wait_until(lambda: "SIGTERM received" in worker.err(), "the first signal is seen")
        os.kill(worker.pid, signal.SIGTERM)
        assert worker.wait(30) == EXIT_ABORTED, worker.err()
    finally:
        worker.stop()
    taken_over_exactly_once(messaging, database_url, "transaction", clock)


@pytest.mark.parametrize("mode", ["transaction", "lease"])
def test_busway_run_handler_timeout_dead_letters_a_stuck_handling_and_goes_on(
    app, database_url, tmp_path, mode
):
    messaging = app(mode=mode)
    send_two(messaging)
    marker = tmp_path / "marker"
    env = environment(
        url=database_url, mode=mode, worker="w", pause="handler", pause_job="a", marker=marker
    )
    worker = start(tmp_path, env, *RUN, "--until-empty", "--handler-timeout", "0.5s")
    try:
        assert worker.wait(60) == 0, worker.err()
    finally:
        worker.stop()
    assert marker.exists()  # job "a" did hang
    stopped = worker.logs()[-1]
    assert (stopped["reason"], stopped["handled"], stopped["failed"]) == ("empty", 2, 1)
    assert effects(database_url) == [("b", "w")]  # the stuck handler's write rolled back
    assert waiting(database_url) == []
    (letter,) = messaging.dead_letters.list()
    assert letter.error_type == "busway.errors.HandlerTimeout"
    assert "0.5s" in letter.error_message
