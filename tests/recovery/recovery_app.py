"""The application the recovery tests run, in the test process and in worker processes.

A worker process runs it through the real executable, with this folder on ``PYTHONPATH``::

    busway run jobs --app recovery_app:messaging

and takes its settings from the environment:

- ``RECOVERY_URL`` (required), ``RECOVERY_MODE`` (``transaction`` or ``lease``),
  ``RECOVERY_WORKER`` (the name its effect rows carry), ``RECOVERY_BATCH``,
  ``RECOVERY_VISIBILITY`` (the lease, in seconds), ``RECOVERY_FAILING`` (``0``: jobs named
  "fail..." succeed too);
- ``RECOVERY_PAUSE`` (``handler``: inside the handler, after its write; ``ack``: at the
  acknowledgement, after the handler returned), ``RECOVERY_PAUSE_JOB`` (only for this job),
  ``RECOVERY_MARKER`` (a file written when the pause begins) and ``RECOVERY_RELEASE`` (a file
  whose appearance ends the pause; without it the pause lasts until the process is killed);
- ``RECOVERY_READY`` / ``RECOVERY_GO``: write the first file once built, then wait for the
  second before consuming, so that several workers start at the same moment.

Every ``Job`` writes one row to ``recovery_effects`` through the handler's Session, in the
transaction busway gives it: the rows say how many times a job took effect.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, event, insert
from sqlalchemy.orm import Session

from busway import (
    CommandBus,
    Headers,
    Messaging,
    RetryPolicy,
    SqlChannel,
    asynchronous,
    command_handler,
)
from markers import write_atomically

PAUSE_LIMIT = 60.0
"""A paused worker gives up after this long, so a failed test never leaves it behind."""


@dataclass
class Job:
    id: str


@asynchronous("jobs")
class JobBus(CommandBus):
    """Commands sent here wait on the ``jobs`` channel for a worker."""


metadata = MetaData()
effects = Table(
    "recovery_effects",
    metadata,
    Column("n", Integer, primary_key=True, autoincrement=True),
    Column("job", String(400), nullable=False),
    Column("worker", String(50), nullable=False),
)


@dataclass
class Pause:
    """Where a worker stops to be killed or signalled, and how the test learns it is there."""

    at: str
    marker: Path
    release: Path | None = None
    job: str | None = None
    done: bool = False

    def applies(self, at: str, job: str | None = None) -> bool:
        return not self.done and self.at == at and (self.job is None or job == self.job)

    def hold(self, what: str) -> None:
        self.done = True
        write_atomically(self.marker, what)
        deadline = time.monotonic() + PAUSE_LIMIT
        while self.release is None or not self.release.exists():
            if time.monotonic() > deadline:
                raise SystemExit("paused for too long: the test never released or killed me")
            time.sleep(0.005)


class Refused(Exception):
    pass


class Runaway(BaseException):
    """A job handled over and over: a worker stuck redoing it. Ends the run at once."""


RUNAWAY_CALLS = 10


class Jobs:
    """Writes one effect row per job; a job whose id starts with "fail" then fails, while
    ``failing`` is true."""

    def __init__(
        self, worker: str = "test", pause: Pause | None = None, failing: bool = True
    ) -> None:
        self.worker = worker
        self.pause = pause
        self.failing = failing
        self.calls: list[str] = []
        self.attempts: list[int] = []
        self.handled: str | None = None

    @command_handler
    def work(self, job: Job, session: Session, headers: Headers) -> None:
        self.calls.append(job.id)
        self.attempts.append(headers.attempt)
        if self.calls.count(job.id) > RUNAWAY_CALLS:
            raise Runaway(f"job {job.id} handled {RUNAWAY_CALLS} times and again")
        session.execute(insert(effects).values(job=job.id, worker=self.worker))
        if self.pause is not None and self.pause.applies("handler", job.id):
            self.pause.hold(job.id)
        if self.failing and job.id.startswith("fail"):
            raise Refused(job.id)
        self.handled = job.id


def build(
    url: str,
    *,
    mode: str = "transaction",
    batch_size: int = 100,
    visibility_timeout: float = 30.0,
    jobs: Jobs | None = None,
    clock: Callable[[], float] = time.time,
    **options: Any,
) -> Messaging:
    """The application on ``url``: ``jobs`` handles ``Job``s from the ``jobs`` channel."""
    jobs = jobs or Jobs()
    options.setdefault("retry", RetryPolicy(retries=0))
    messaging = Messaging(
        handlers=[jobs],
        channels=[
            SqlChannel(
                "jobs",
                mode=mode,  # type: ignore[arg-type]
                batch_size=batch_size,
                visibility_timeout=visibility_timeout,
            )
        ],
        database=url,
        clock=clock,
        **options,
    )
    if jobs.pause is not None and jobs.pause.at == "ack":
        _pause_at_acknowledgement(messaging, jobs, jobs.pause)
    return messaging


ACKNOWLEDGEMENT = re.compile(r"DELETE (M, N )?FROM BUSWAY_MESSAGES ")
"""The statement that deletes what a batch handled (with its notes of messages in hand)."""


def _pause_at_acknowledgement(messaging: Messaging, jobs: Jobs, pause: Pause) -> None:
    """Hold the worker as it deletes what it handled: after the handler, before the ack."""

    def before_execute(*args: Any) -> None:
        statement = str(args[2]).lstrip().upper()
        if ACKNOWLEDGEMENT.search(statement) and pause.applies("ack", jobs.handled):
            pause.hold(jobs.handled or "")

    # On every engine of the process: workers claim through an engine of their own.
    event.listen(Engine, "before_cursor_execute", before_execute)


def _from_environment() -> Messaging:
    env = os.environ
    pause = None
    if env.get("RECOVERY_PAUSE"):
        release = env.get("RECOVERY_RELEASE")
        pause = Pause(
            at=env["RECOVERY_PAUSE"],
            marker=Path(env["RECOVERY_MARKER"]),
            release=Path(release) if release else None,
            job=env.get("RECOVERY_PAUSE_JOB"),
        )
    messaging = build(
        env["RECOVERY_URL"],
        mode=env.get("RECOVERY_MODE", "transaction"),
        batch_size=int(env.get("RECOVERY_BATCH", "100")),
        visibility_timeout=float(env.get("RECOVERY_VISIBILITY", "30")),
        jobs=Jobs(env.get("RECOVERY_WORKER", "worker"), pause, env.get("RECOVERY_FAILING") != "0"),
    )
    if env.get("RECOVERY_READY"):
        write_atomically(Path(env["RECOVERY_READY"]), "ready")
        go = Path(env["RECOVERY_GO"])
        deadline = time.monotonic() + PAUSE_LIMIT
        while not go.exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"{go} never appeared")
            time.sleep(0.002)
    return messaging


_built: list[Messaging] = []


def __getattr__(name: str) -> Any:
    """``recovery_app:messaging`` is built from the environment when first asked for."""
    if name != "messaging":
        raise AttributeError(name)
    if not _built:
        _built.append(_from_environment())
    return _built[0]
