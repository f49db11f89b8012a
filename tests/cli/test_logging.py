"""What ``busway run`` logs: the application's own loggers, at ``--log-level``, a line per
message on demand, and a summary that tells retries from dead letters. Run as a real process
on a SQLite file."""

from __future__ import annotations

import json
import logging
import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cli_support import busway, busway_executable, log_lines, read_all

from busway.cli.logs import JsonFormatter, ReadableFormatter

APP = """
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from busway import (
    CommandBus, Messaging, RetryPolicy, SqlChannel, asynchronous, command_handler,
)

HERE = Path(__file__).parent
log = logging.getLogger("shop.greetings")


@dataclass
class Greet:
    name: str
    failures: int = 0
    "How many times its handling fails before it succeeds (-1: always)."


@asynchronous("greetings")
class Greetings(CommandBus):
    pass


@command_handler
def greet(command: Greet) -> None:
    tries = HERE / f"tries-{command.name}"
    tried = len(tries.read_text()) if tries.exists() else 0
    tries.write_text("x" * (tried + 1))
    if command.failures < 0 or tried < command.failures:
        raise ValueError(f"cannot greet {command.name} yet")
    log.info("greeted %s", command.name, extra={"customer": command.name})
    log.debug("greeted %s, in detail", command.name)


messaging = Messaging(
    handlers=[greet],
    channels=[SqlChannel("greetings")],
    database=f"sqlite:///{HERE / 'shop.db'}",
    retry=RetryPolicy(retries=RETRIES, initial_delay=0, jitter=0),
)


def enqueue(*greets: tuple[str, int]) -> None:
    messaging.setup()
    bus = messaging.gateway(Greetings)
    for name, failures in greets:
        bus.send(Greet(name, failures))
    messaging.close()
"""


def shop(directory: Path, *greets: tuple[str, int], retries: int = 2) -> Path:
    (directory / "greeter.py").write_text(APP.replace("RETRIES", str(retries)))
    code = f"import greeter; greeter.enqueue(*{greets!r})"
    subprocess.run([sys.executable, "-c", code], cwd=directory, check=True, timeout=60)
    return directory


RUN = ("run", "greetings", "--until-empty", "--app", "greeter:messaging")


def test_a_handlers_own_logger_is_seen_by_default(tmp_path: Path) -> None:
    done = busway(shop(tmp_path, ("ann", 0)), *RUN)

    assert done.returncode == 0, done.stderr
    greeted = [line for line in log_lines(done.stderr) if line["logger"] == "shop.greetings"]
    assert greeted == [
        {
            "time": greeted[0]["time"],
            "level": "info",
            "logger": "shop.greetings",
            "message": "greeted ann",
            "customer": "ann",
        }
    ]


@pytest.mark.parametrize(
    ("level", "seen"),
    [
        ("warning", []),
        ("info", ["greeted ann"]),
        ("DEBUG", ["greeted ann", "greeted ann, in detail"]),
    ],
)
def test_log_level_sets_what_is_seen(tmp_path: Path, level: str, seen: list[str]) -> None:
    done = busway(shop(tmp_path, ("ann", 0)), *RUN, "--log-level", level)

    assert done.returncode == 0, done.stderr
    lines = log_lines(done.stderr)
    assert [line["message"] for line in lines if line["logger"] == "shop.greetings"] == seen
    if level == "warning":  # busway's own info lines, the summary among them, go too
        assert not [line for line in lines if line["level"] == "info"]


def test_the_log_level_can_come_from_the_environment(tmp_path: Path) -> None:
    done = busway(shop(tmp_path, ("ann", 0)), *RUN, env={"BUSWAY_LOG_LEVEL": "warning"})

    assert done.returncode == 0, done.stderr
    assert not [line for line in log_lines(done.stderr) if line["logger"] == "shop.greetings"]


def test_an_unknown_log_level_is_a_usage_error(tmp_path: Path) -> None:
    done = busway(shop(tmp_path), *RUN, "--log-level", "loud")

    assert done.returncode == 2
    assert "'loud' is not one of 'debug', 'info', 'warning', 'error', 'critical'" in done.stderr


def test_log_each_gives_a_line_per_message(tmp_path: Path) -> None:
    done = busway(shop(tmp_path, ("ann", 0), ("bob", -1)), *RUN, "--log-each")

    assert done.returncode == 0, done.stderr
    each = [line for line in log_lines(done.stderr) if line["logger"] == "busway.messages"]
    outcomes = [(line["message"].split(": ")[-1].rsplit(" in ", 1)[0]) for line in each]
    assert outcomes == [
        "handled",
        "failed, retried later",
        "failed, retried later",
        "failed, dead-lettered",
    ]
    assert {line["channel"] for line in each} == {"greetings"}
    assert {line["message_type"] for line in each} == {"greeter.Greet"}
    assert len({line["message_id"] for line in each}) == 2  # ann's, and bob's each time
    assert all(line["duration_ms"] >= 0 for line in each)


def test_without_log_each_there_is_no_line_per_message(tmp_path: Path) -> None:
    done = busway(shop(tmp_path, ("ann", 0)), *RUN)

    assert done.returncode == 0, done.stderr
    assert not [line for line in log_lines(done.stderr) if line["logger"] == "busway.messages"]


def test_the_summary_tells_retries_from_dead_letters(tmp_path: Path) -> None:
    """ann succeeds; bob fails twice then succeeds; cid always fails (3 tries, then a dead
    letter): 1 + 3 + 3 deliveries, 2 + 3 of them failed, 2 + 2 retried later, 1 dead letter."""
    done = busway(shop(tmp_path, ("ann", 0), ("bob", 2), ("cid", -1)), *RUN)

    assert done.returncode == 0, done.stderr
    summary = log_lines(done.stderr)[-1]
    figures = {key: summary[key] for key in ("handled", "failed", "retried", "dead_lettered")}
    assert figures == {"handled": 7, "failed": 5, "retried": 4, "dead_lettered": 1}
    assert summary["message"].startswith("stopped (empty) after ")
    assert summary["message"].endswith(
        ": handled 7, 2 succeeded, 5 failed (4 retried later, 1 dead-lettered)"
    )
    assert (tmp_path / "tries-bob").read_text() == "xxx"


def test_a_terminal_gets_readable_lines_with_their_fields(tmp_path: Path) -> None:
    shop(tmp_path, ("ann", 0), ("cid", -1), retries=0)
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen(
            [busway_executable(), *RUN, "--log-each"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=follower,
            text=True,
            env=dict(os.environ),
        )
        os.close(follower)
        process.communicate(timeout=60)
        screen = read_all(leader)
    finally:
        os.close(leader)

    assert process.returncode == 0
    assert "INFO shop.greetings: greeted ann  customer=ann" in screen
    assert "DEBUG busway.messages: message " in screen
    assert "channel=greetings" in screen
    assert "outcome=failed retried=0 dead_lettered=1" in screen
    assert "handled 2  failed 1  retried 0  dead-lettered 1" in screen
    assert not any(line.lstrip().startswith("{") for line in screen.splitlines())


# -- the formatters, on the fields busway's records carry -------------------------------------

FIELDS = {
    "channel": "orders",
    "handler": "shop.place",
    "message_id": "01a2-77",
    "dead_letter_id": "dl-9",
    "attempt": 3,
    "error_type": "builtins.ValueError",
}


def record(extra: dict[str, Any]) -> logging.LogRecord:
    logger = logging.getLogger("busway.test")
    made = logger.makeRecord(
        "busway", logging.ERROR, __file__, 1, "it failed: %s", ("badly",), None, extra=extra
    )
    return made


@pytest.mark.parametrize("extra", [FIELDS, {"fields": FIELDS}], ids=["attributes", "fields"])
def test_json_lines_carry_every_field(extra: dict[str, Any]) -> None:
    line = json.loads(JsonFormatter().format(record(extra)))

    assert line["message"] == "it failed: badly"
    assert line["level"] == "error"
    assert {key: line[key] for key in FIELDS} == FIELDS


@pytest.mark.parametrize("extra", [FIELDS, {"fields": FIELDS}], ids=["attributes", "fields"])
def test_readable_lines_carry_every_field(extra: dict[str, Any]) -> None:
    line = ReadableFormatter().format(record(extra))

    assert line.endswith(
        "ERROR busway: it failed: badly  channel=orders handler=shop.place message_id=01a2-77 "
        "dead_letter_id=dl-9 attempt=3 error_type=builtins.ValueError"
    )


def test_figures_the_text_states_are_for_json_lines_only() -> None:
    made = record({"figures": {"handled": 3}, "channel": "a b"})

    assert ReadableFormatter().format(made).endswith('it failed: badly  channel="a b"')
    assert json.loads(JsonFormatter().format(made))["handled"] == 3
