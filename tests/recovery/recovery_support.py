"""What the recovery tests share: reading the database, and driving ``busway`` processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
import recovery_app
from sqlalchemy import MetaData, Table, create_engine, select, text

from dbsupport import create_tables, sync_url

HERE = Path(__file__).parent


# -- the database, as seen from outside busway ----------------------------------------------


def make_tables(url: str) -> None:
    create_tables(url, recovery_app.metadata)


def effects(url: str) -> list[tuple[str, str]]:
    """(job, worker) of every effect row, in the order written."""
    table = recovery_app.effects
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(table.c.job, table.c.worker).order_by(table.c.n))
            return [(job, worker) for job, worker in rows]
    finally:
        engine.dispose()


def effect_counts(url: str) -> Counter[str]:
    return Counter(job for job, _ in effects(url))


@dataclass(frozen=True)
class WaitingRow:
    headers: dict[str, Any]
    body: bytes
    deliveries: int
    available_at: float


def waiting(url: str, channel: str = "jobs") -> list[WaitingRow]:
    """The rows of ``channel`` in ``busway_messages``, oldest first."""
    engine = create_engine(sync_url(url))
    try:
        table = Table("busway_messages", MetaData(), autoload_with=engine)
        with engine.connect() as connection:
            rows = connection.execute(
                select(table).where(table.c.channel == channel).order_by(table.c.seq)
            ).all()
    finally:
        engine.dispose()
    return [
        WaitingRow(
            msgspec.json.decode(row.headers),
            bytes(row.body),
            row.deliveries,
            row.available_at / 1000,
        )
        for row in rows
    ]


def execute(url: str, *statements: str) -> None:
    engine = create_engine(sync_url(url))
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.execute(text(statement))
    finally:
        engine.dispose()


# -- busway processes -------------------------------------------------------------------------


def busway_executable() -> str:
    found = shutil.which("busway", path=str(Path(sys.executable).parent)) or shutil.which("busway")
    assert found, "the busway console script is not installed next to this Python"
    return found


def environment(**settings: str | Path | int | float) -> dict[str, str]:
    """This environment, with the app importable and ``RECOVERY_*`` settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RECOVERY_")}
    env.pop("BUSWAY_APP", None)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), *sys.path])
    env.update({f"RECOVERY_{key.upper()}": str(value) for key, value in settings.items()})
    return env


@dataclass
class Process:
    popen: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float = 60) -> int:
        return self.popen.wait(timeout)

    def out(self) -> str:
        return self.stdout.read_text()

    def err(self) -> str:
        return self.stderr.read_text()

    def logs(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.err().splitlines() if line.startswith("{")]

    def stop(self) -> None:
        """Kill it if it is still running (a failed test must not leave it behind)."""
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(30)


def start(directory: Path, env: dict[str, str], *args: str, name: str = "busway") -> Process:
    """Start the real ``busway`` executable; its output goes to files in ``directory``."""
    stdout, stderr = directory / f"{name}.out", directory / f"{name}.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        popen = subprocess.Popen(
            [busway_executable(), *args], cwd=directory, env=env, stdout=out, stderr=err
        )
    return Process(popen, stdout, stderr)


def busway(directory: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real ``busway`` executable to its end."""
    return subprocess.run(
        [busway_executable(), *args],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def wait_until(condition: Any, what: str, processes: tuple[Process, ...] = (), timeout=60) -> None:
    """Poll another process's progress; fail if one of them dies or the deadline passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        for process in processes:
            if process.poll() is not None:
                pytest.fail(f"worker exited ({process.poll()}) before {what}:\n{process.err()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def settled(url: str, timeout: float = 30) -> None:
    """Wait until no other session has a transaction open on this database.

    A killed worker's server session is rolled back when the server notices the connection
    is gone, which may take a moment; until then its claimed rows stay locked.
    """
    if url.startswith("sqlite"):
        return
    query = (
        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND xact_start IS NOT NULL"
        if url.startswith("postgresql")
        else "SELECT COUNT(*) FROM information_schema.innodb_trx t "
        "JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id "
        "WHERE p.db = DATABASE() AND p.id <> CONNECTION_ID()"
    )
    engine = create_engine(sync_url(url))
    try:

        def idle() -> bool:
            with engine.connect() as connection:
                return connection.execute(text(query)).scalar_one() == 0

        wait_until(idle, "the killed worker's transaction is rolled back", timeout=timeout)
    finally:
        engine.dispose()
