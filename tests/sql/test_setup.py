"""Set-up at first use (``auto_setup``), and the one sentence a missing table gives without it."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from busway import (
    CommandBus,
    ConfigurationError,
    Messaging,
    RetryPolicy,
    SetupRequired,
    SqlChannel,
    asynchronous,
    command_handler,
)
from dbsupport import sync_url


@dataclass
class Job:
    job_id: str


@asynchronous("jobs")
class Jobs(CommandBus):
    pass


class Worker:
    def __init__(self) -> None:
        self.seen: list[str] = []

    @command_handler
    def do(self, job: Job) -> None:
        if job.job_id == "bad":
            raise ValueError("a bad job")
        self.seen.append(job.job_id)


def app(database_url: str, worker: Worker | None = None, **options: object) -> Messaging:
    return Messaging(
        handlers=[worker or Worker()],
        channels=[SqlChannel("jobs")],
        database=database_url,
        retry=RetryPolicy(retries=0),
        **options,  # type: ignore[arg-type]
    )


def rows(database_url: str, table: str) -> int:
    engine = create_engine(sync_url(database_url))
    try:
        with engine.connect() as connection:
            return int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
    finally:
        engine.dispose()


@pytest.fixture
def manual(database_url: str) -> Iterator[Messaging]:
    """An application on a fresh database that leaves set-up to ``busway setup``."""
    messaging = app(database_url, auto_setup=False)
    yield messaging
    messaging.close()


def assert_setup_required(error: BaseException, table: str) -> None:
    text_ = str(error)
    assert isinstance(error, SetupRequired)
    assert text_.startswith(f"table {table} does not exist in database ")
    assert "`busway setup`" in text_
    assert "\n" not in text_
    assert "SELECT" not in text_ and "INSERT" not in text_


# -- auto_setup (the default) -------------------------------------------------------------------


def test_a_fresh_database_works_without_setup(database_url: str) -> None:
    worker = Worker()
    messaging = app(database_url, worker)
    try:
        assert messaging.dead_letters.list() == []
        jobs = messaging.gateway(Jobs)
        jobs.send(Job("a"))
        jobs.send(Job("bad"))

        result = messaging.run("jobs")

        assert (result.handled, result.failed) == (2, 1)
        assert worker.seen == ["a"]
        assert [letter.error_type for letter in messaging.dead_letters.list()] == [
            "builtins.ValueError"
        ]
        assert rows(database_url, "busway_inbox") == 1
        assert messaging.cleanup_inbox(older_than=3600) == 0
    finally:
        messaging.close()


async def test_a_fresh_database_works_without_setup_in_asyncio_code(database_url: str) -> None:
    worker = Worker()
    messaging = app(database_url, worker)
    try:
        jobs = messaging.gateway(Jobs)
        async with messaging.atransaction():
            await jobs.asend(Job("a"))
        await jobs.asend(Job("bad"))

        result = await messaging.arun("jobs")

        assert (result.handled, result.failed) == (2, 1)
        assert worker.seen == ["a"]
        assert len(messaging.dead_letters.list()) == 1
        assert rows(database_url, "busway_inbox") == 1
    finally:
        await messaging.aclose()


def test_a_transaction_sets_up_before_it_begins(database_url: str) -> None:
    """On SQLite a transaction holds the write lock: set-up inside it would wait for itself."""
    worker = Worker()
    messaging = app(database_url, worker)
    try:
        with messaging.transaction():
            messaging.gateway(Jobs).send(Job("a"))
        assert messaging.run("jobs").handled == 1
        assert worker.seen == ["a"]
    finally:
        messaging.close()


def test_first_uses_racing_on_a_fresh_database_all_succeed(database_url: str) -> None:
    """Two applications (as two processes would) and two threads in each, all at once."""
    applications = [app(database_url), app(database_url)]
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def send(messaging: Messaging, job_id: str) -> None:
        try:
            start.wait(timeout=30)
            messaging.gateway(Jobs).send(Job(job_id))
        except BaseException as error:
            errors.append(error)

    threads = [
        threading.Thread(target=send, args=(messaging, f"{index}-{thread}"))
        for index, messaging in enumerate(applications)
        for thread in range(2)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=90)
        assert errors == []
        assert rows(database_url, "busway_messages") == 4
        assert applications[0].run("jobs").handled == 4
    finally:
        for messaging in applications:
            messaging.close()


# -- auto_setup=False: one sentence naming `busway setup` ---------------------------------------


def test_send_without_setup_says_to_set_up(manual: Messaging) -> None:
    with pytest.raises(SetupRequired) as error:
        manual.gateway(Jobs).send(Job("a"))
    assert_setup_required(error.value, "busway_messages")


async def test_asend_without_setup_says_to_set_up(manual: Messaging) -> None:
    try:
        with pytest.raises(SetupRequired) as error:
            await manual.gateway(Jobs).asend(Job("a"))
        assert_setup_required(error.value, "busway_messages")
    finally:
        await manual.aclose()


def test_run_without_setup_says_to_set_up(manual: Messaging) -> None:
    with pytest.raises(SetupRequired) as error:
        manual.run("jobs")
    assert_setup_required(error.value, "busway_messages")


@pytest.mark.parametrize("concurrency", [1, 3])
def test_a_worker_until_stopped_does_not_retry_a_missing_table(
    manual: Messaging, concurrency: int
) -> None:
    with pytest.raises(SetupRequired) as error:
        manual.run("jobs", until_empty=False, concurrency=concurrency)
    assert_setup_required(error.value, "busway_messages")


async def test_arun_without_setup_says_to_set_up(manual: Messaging) -> None:
    try:
        with pytest.raises(SetupRequired) as error:
            await manual.arun("jobs", until_empty=False)
        assert_setup_required(error.value, "busway_messages")
    finally:
        await manual.aclose()


def test_dead_letters_without_setup_say_to_set_up(manual: Messaging) -> None:
    with pytest.raises(SetupRequired) as error:
        manual.dead_letters.list()
    assert_setup_required(error.value, "busway_dead_letters")


def test_a_missing_inbox_says_to_set_up(manual: Messaging) -> None:
    """The channel's table is there, the inbox is not: the worker stops with the sentence
    instead of failing every message into the dead letter store."""
    manual.channel("jobs").setup()
    manual.gateway(Jobs).send(Job("a"))

    with pytest.raises(SetupRequired) as error:
        manual.run("jobs", until_empty=False)

    assert_setup_required(error.value, "busway_inbox")
    assert manual.channel("jobs").depth() == 1
    with pytest.raises(SetupRequired) as cleanup:
        manual.cleanup_inbox(older_than=3600)
    assert_setup_required(cleanup.value, "busway_inbox")


def test_setup_then_everything_works(manual: Messaging) -> None:
    manual.setup()
    manual.gateway(Jobs).send(Job("a"))
    assert manual.run("jobs").handled == 1
    assert manual.dead_letters.list() == []


# -- the command line ---------------------------------------------------------------------------

APP = """
from dataclasses import dataclass

from busway import Messaging, SqlChannel, command_handler


@dataclass
class Job:
    job_id: str


@command_handler
def do(job: Job) -> None:
    pass


messaging = Messaging(
    handlers=[do], channels=[SqlChannel("jobs")], database=DATABASE, auto_setup=AUTO
)
"""


def write_app(directory: Path, database_url: str, auto_setup: bool) -> None:
    source = APP.replace("DATABASE", repr(database_url)).replace("AUTO", repr(auto_setup))
    (directory / "jobs_app.py").write_text(textwrap.dedent(source))


def busway(directory: Path, *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
    """Run each of ``commands`` on the app of ``directory``, side by side."""
    started = [
        (
            command,
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from busway.cli import main; main()",
                    *command,
                    "--app",
                    "jobs_app:messaging",
                ],
                cwd=directory,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
        for command in commands
    ]
    done = []
    for command, process in started:
        stdout, stderr = process.communicate(timeout=60)
        done.append(subprocess.CompletedProcess(command, process.returncode, stdout, stderr))
    return done


COMMANDS = [
    ("channels",),
    ("dead-letter", "list"),
    ("run", "jobs", "--until-empty"),
    ("run", "jobs"),
    ("run", "jobs", "--concurrency", "2"),
]


def test_the_command_line_without_setup_exits_2_with_one_sentence(
    database_url: str, tmp_path: Path
) -> None:
    write_app(tmp_path, database_url, auto_setup=False)
    for done in busway(tmp_path, *COMMANDS):
        command = done.args
        assert done.returncode == 2, (command, done.stderr)
        assert "Traceback" not in done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1, (command, done.stderr)
        assert "does not exist in database" in errors[0]
        assert "`busway setup`" in errors[0]


def test_the_command_line_on_a_fresh_database_sets_up_by_itself(
    database_url: str, tmp_path: Path
) -> None:
    write_app(tmp_path, database_url, auto_setup=True)

    listed, letters, ran = busway(
        tmp_path, ("channels",), ("dead-letter", "list"), ("run", "jobs", "--until-empty")
    )

    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[1].split()[:3] == ["jobs", "SqlChannel", "0"]
    assert letters.returncode == 0, letters.stderr
    assert ran.returncode == 0, ran.stderr
    assert rows(database_url, "busway_dead_letters") == 0


def test_a_missing_table_of_the_application_keeps_the_drivers_error(database_url: str) -> None:
    """Only busway's own tables are told as set-up; a name that merely starts like one is not."""
    from sqlalchemy.exc import DBAPIError

    messaging = app(database_url)
    try:
        messaging.setup()
        for table in ("orders", "busway_messages_archive"):
            with (
                pytest.raises(DBAPIError) as error,
                messaging.database_engine.connect() as connection,
            ):
                connection.execute(text(f"SELECT * FROM {table}"))
            assert not isinstance(error.value, SetupRequired)
            assert table in str(error.value)
    finally:
        messaging.close()


def test_setup_names_what_a_dead_letter_table_of_an_earlier_version_lacks(
    database_url: str,
) -> None:
    engine = create_engine(sync_url(database_url))
    body = {"sqlite": "BLOB", "mysql": "LONGBLOB", "postgresql": "BYTEA"}[engine.dialect.name]
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "CREATE TABLE busway_dead_letters (id VARCHAR(64) PRIMARY KEY, "
                    "channel VARCHAR(200) NOT NULL, handler VARCHAR(500), "
                    "message_id VARCHAR(64), headers TEXT NOT NULL, "
                    f"body {body} NOT NULL, error_type VARCHAR(500) NOT NULL, "
                    "error_message TEXT NOT NULL, traceback TEXT NOT NULL, "
                    "attempts INTEGER NOT NULL, failed_at DOUBLE PRECISION NOT NULL)"
                )
            )
        messaging = Messaging(channels=[SqlChannel("jobs")], database=database_url)
        lacks = re.escape("lacks the column(s) ordering_key")
        with pytest.raises(ConfigurationError, match=lacks) as error:
            messaging.setup()
        with engine.begin() as connection:
            for statement in str(error.value).split("add them with: ")[1].split("; "):
                connection.execute(text(statement))
        messaging.setup()
        assert messaging.dead_letters.blocked() == []
        messaging.close()
    finally:
        engine.dispose()
