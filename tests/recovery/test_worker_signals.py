"""Worker processes stopped by signals: SIGTERM finishes the message in hand; SIGKILL at any
step loses nothing and repeats no effect."""

import os
import signal
import time

import msgspec
import pytest
from recovery_app import Job, JobBus, Jobs
from recovery_support import effects, environment, settled, start, wait_until, waiting

from busway.testing import FakeClock
from markers import write_atomically

RUN = ("run", "jobs", "--app", "recovery_app:messaging")


def send_two(messaging):
    with messaging.transaction():  # one commit: a worker claims both in one batch
        messaging.gateway(JobBus).send(Job("a"))
        messaging.gateway(JobBus).send(Job("b"))


@pytest.mark.parametrize("mode", ["transaction", "lease"])
def test_sigterm_mid_handler_finishes_that_message_and_leaves_the_next(
    app, database_url, tmp_path, mode
):
    jobs = Jobs()
    messaging = app(jobs=jobs, mode=mode)
    send_two(messaging)
    marker, release = tmp_path / "marker", tmp_path / "release"
    env = environment(
        url=database_url, mode=mode, worker="w", pause="handler", marker=marker, release=release
    )
    worker = start(tmp_path, env, *RUN)
    try:
        wait_until(marker.exists, "the worker is inside the handler", (worker,))
        os.kill(worker.pid, signal.SIGTERM)
        assert worker.poll() is None  # still in the handler, which it finishes
        write_atomically(release, "go on")
        assert worker.wait(30) == 0, worker.err()
    finally:
        worker.stop()

    stopped = worker.logs()[-1]
    assert (stopped["reason"], stopped["handled"], stopped["failed"]) == ("SIGTERM", 1, 0)
    assert effects(database_url) == [("a", "w")]
    (left,) = waiting(database_url)
    assert msgspec.json.decode(left.body) == {"id": "b"}
    assert "busway.attempt" not in left.headers  # no attempt counted
    assert left.available_at <= time.time()  # given back at once, even from a lease

    assert messaging.run("jobs").handled == 1
    assert (jobs.calls, jobs.attempts) == (["b"], [0])
    assert effects(database_url) == [("a", "w"), ("b", "test")]
    assert messaging.dead_letters.list() == []


@pytest.mark.parametrize(
    ("mode", "step"),
    [
        ("transaction", "handler"),  # the handler's writes made, not committed
        ("transaction", "ack"),  # the handlers done; the claim, writes and ack one transaction
        ("lease", "handler"),  # claimed and leased; the handler's own transaction open
        ("lease", "ack"),  # the handlers' transactions committed; the acknowledgement not made
    ],
)
def test_sigkill_at_each_step_loses_nothing_and_repeats_no_effect(
    app, database_url, tmp_path, mode, step
):
    clock = FakeClock(time.time())
    jobs = Jobs()
    messaging = app(jobs=jobs, mode=mode, clock=clock, visibility_timeout=30)
    send_two(messaging)
    marker = tmp_path / "marker"
    env = environment(
        url=database_url, mode=mode, worker="killed", pause=step, marker=marker, visibility=30
    )
    worker = start(tmp_path, env, *RUN)
    try:
        wait_until(marker.exists, f"the worker is at the {step}", (worker,))
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(30)
    assert worker.poll() == -signal.SIGKILL
    settled(database_url)

    committed = mode == "lease" and step == "ack"
    assert effects(database_url) == ([("a", "killed"), ("b", "killed")] if committed else [])
    left = waiting(database_url)
    assert len(left) == 2  # nothing acknowledged

    if mode == "lease":
        lease_end = max(row.available_at for row in left)
        assert lease_end > time.time() + 25  # leased for the visibility timeout
        clock.advance(lease_end - clock() - 1)
        assert messaging.run("jobs").handled == 0  # still leased to the dead worker
        clock.advance(1.5)
    result = messaging.run("jobs")

    assert (result.handled, result.failed) == (2, 0)
    # Taken over, each message takes effect once: again if its effect was lost, not at all
    # (the inbox skips the handler) if its effect was committed.
    assert jobs.calls == ([] if committed else ["a", "b"])
    assert sorted(job for job, _ in effects(database_url)) == ["a", "b"]
    assert waiting(database_url) == []
    assert messaging.dead_letters.list() == []
