"""``busway workers`` and ``busway health`` for an application without a database: its
workers' heartbeats live in their own process, which these commands say."""

from __future__ import annotations

from pathlib import Path

from cli_support import busway

APP = """
from busway import InMemoryChannel, Messaging

messaging = Messaging(channels=[InMemoryChannel("local")])
"""


def test_workers_says_another_process_cannot_know(tmp_path: Path) -> None:
    (tmp_path / "local_app.py").write_text(APP)

    listed = busway(tmp_path, "workers", "--app", "local_app:messaging")

    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[-1] == "0 worker(s), 0 silent"
    assert "this application has no database: only the workers of this process" in listed.stderr


def test_health_without_a_database_finds_no_live_worker(tmp_path: Path) -> None:
    (tmp_path / "local_app.py").write_text(APP)

    checked = busway(tmp_path, "health", "--app", "local_app:messaging")

    assert checked.returncode == 1
    assert checked.stdout.splitlines()[1].split() == ["local", "0", "-", "0", "UNHEALTHY"]
    assert "unhealthy: channel 'local': no live worker consumes it" in checked.stdout
    assert "this application has no database" in checked.stderr
