"""The ``busway`` command, driven as a real executable and, for in-memory state, in-process."""

from __future__ import annotations

import json
import os
import pty
import signal
import sqlite3
import subprocess
import sys
import textwrap
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cli_support import busway, busway_executable, log_lines, read_all
from click.testing import CliRunner

from busway import (
    CommandBus,
    InMemoryChannel,
    Messaging,
    RetryPolicy,
    asynchronous,
    command_handler,
)
from busway.cli import cli
from busway.cli.values import parse_duration, parse_size
from busway.testing import FakeClock, run_until_idle

SHOP = """
from dataclasses import dataclass

from busway import (
    CommandBus, InMemoryChannel, Messaging, RetryPolicy, asynchronous, command_handler,
)


@dataclass
class Greet:
    name: str


@asynchronous("async")
class AsyncCommandBus(CommandBus):
    pass


@command_handler
def greet(command: Greet) -> None:
    if command.name == "bad":
        raise ValueError("cannot greet bad")
    print(f"hello {command.name}", flush=True)


messaging = Messaging(
    handlers=[greet],
    channels=[InMemoryChannel("async"), InMemoryChannel("other")],
    retry=RetryPolicy(retries=0),
)
bus = messaging.gateway(AsyncCommandBus)
for name in NAMES:
    bus.send(Greet(name))
"""


def write_app(directory: Path, names: list[str], module: str = "shop") -> None:
    source = SHOP.replace("NAMES", repr(names))
    (directory / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    write_app(tmp_path, ["ann", "bad", "bob"])
    return tmp_path


# -- busway run, as a real process -----------------------------------------------------------


def test_run_until_empty_handles_every_message_and_exits_0(shop: Path) -> None:
    done = busway(shop, "run", "async", "--app", "shop:messaging", "--until-empty")

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["hello ann", "hello bob"]
    stopped = log_lines(done.stderr)[-1]
    assert stopped["reason"] == "empty"
    assert (stopped["handled"], stopped["failed"]) == (3, 1)
    assert any(
        line["level"] == "error" and "cannot greet bad" in line["message"]
        for line in log_lines(done.stderr)
    )


def test_run_stops_on_failure_with_exit_code_1(shop: Path) -> None:
    done = busway(
        shop, "run", "async", "--app", "shop:messaging", "--stop-on-failure", "--until-empty"
    )

    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines() == ["hello ann"]
    assert log_lines(done.stderr)[-1]["reason"] == "failure"


def test_run_stops_at_the_message_limit(shop: Path) -> None:
    done = busway(shop, "run", "async", "--app", "shop:messaging", "--limit", "1")

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["hello ann"]
    assert log_lines(done.stderr)[-1]["reason"] == "limit"


def test_run_accepts_sizes_durations_and_concurrency(shop: Path) -> None:
    done = busway(
        shop,
        "run",
        "async",
        "other",
        "--app",
        "shop:messaging",
        "--until-empty",
        "--memory-limit",
        "64G",
        "--time-limit",
        "10m",
        "--concurrency",
        "2",
    )

    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == ["hello ann", "hello bob"]


def test_the_app_can_come_from_the_environment(shop: Path) -> None:
    done = busway(shop, "run", "async", "--until-empty", env={"BUSWAY_APP": "shop:messaging"})

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["hello ann", "hello bob"]


def test_sigterm_stops_a_run_that_waits_for_messages(shop: Path) -> None:
    process = subprocess.Popen(
        [busway_executable(), "run", "async", "--app", "shop:messaging"],
        cwd=shop,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        first = json.loads(process.stderr.readline())
        assert first["message"] == "consuming async until stopped"
        handled = [process.stdout.readline(), process.stdout.readline()]
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()

    assert process.returncode == 0, stderr
    assert handled == ["hello ann\n", "hello bob\n"]
    assert stdout == ""
    assert log_lines(stderr)[-1]["reason"] == "SIGTERM"


def test_a_terminal_gets_a_live_status_line(shop: Path) -> None:
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen(
            [busway_executable(), "run", "async", "--app", "shop:messaging", "--until-empty"],
            cwd=shop,
            stdout=subprocess.PIPE,
            stderr=follower,
            text=True,
        )
        os.close(follower)
        stdout, _ = process.communicate(timeout=60)
        screen = read_all(leader)
    finally:
        os.close(leader)

    assert process.returncode == 0
    assert stdout.splitlines() == ["hello ann", "hello bob"]
    assert "\r\x1b[Kasync  handled 3  failed 1" in screen
    assert "ERROR busway: message" in screen
    assert not screen.lstrip().startswith("{")


# -- errors: one line, exit code 2 ------------------------------------------------------------


@pytest.mark.parametrize(
    ("app", "message"),
    [
        ("shop", "--app 'shop' must look like module:attribute"),
        ("nowhere:messaging", "no module named 'nowhere'"),
        ("shop:missing", "'shop' has no attribute 'missing'"),
        ("shop:Greet", "--app 'shop:Greet' is a type, not a busway Messaging"),
    ],
)
def test_a_wrong_app_is_one_line_and_exit_code_2(shop: Path, app: str, message: str) -> None:
    done = busway(shop, "channels", "--app", app)

    assert done.returncode == 2
    assert done.stderr.startswith("Error: ")
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_configuration_error_is_printed_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text(
        textwrap.dedent(
            """
            from busway import Messaging, asynchronous, command_handler

            @command_handler("do.it")
            @asynchronous("nowhere")
            def do_it(payload: dict) -> None:
                pass

            messaging = Messaging(handlers=[do_it])
            """
        )
    )
    done = busway(tmp_path, "run", "async", "--app", "broken:messaging")

    assert done.returncode == 2
    assert "no channel is named 'nowhere'" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unknown_channel_is_exit_code_2(shop: Path) -> None:
    done = busway(shop, "run", "nowhere", "--app", "shop:messaging")

    assert done.returncode == 2
    assert "no channel is named 'nowhere' (defined: async, other)" in done.stderr


def test_a_bad_size_is_a_usage_error(shop: Path) -> None:
    done = busway(shop, "run", "async", "--app", "shop:messaging", "--memory-limit", "lots")

    assert done.returncode == 2
    assert "'lots' is not a size" in done.stderr


def test_an_import_error_inside_the_app_keeps_its_traceback(tmp_path: Path) -> None:
    (tmp_path / "needy.py").write_text("import not_installed_anywhere\n")
    done = busway(tmp_path, "channels", "--app", "needy:messaging")

    assert done.returncode == 1
    assert "Traceback" in done.stderr
    assert "not_installed_anywhere" in done.stderr


# -- setup and channels -----------------------------------------------------------------------


def test_channels_lists_kind_and_depth(shop: Path) -> None:
    done = busway(shop, "channels", "--app", "shop:messaging")

    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()]
    assert rows == [
        ["NAME", "KIND", "DEPTH", "OLDEST"],
        ["async", "InMemoryChannel", "3", "-"],
        ["other", "InMemoryChannel", "0", "-"],
    ]


def test_setup_sets_up_every_channel(shop: Path) -> None:
    done = busway(shop, "setup", "--app", "shop:messaging")

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "set up async, other"


def test_setup_sql_without_sql_tables_says_so(shop: Path) -> None:
    done = busway(shop, "setup", "--sql", "--app", "shop:messaging")

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "-- this application has no SQL tables"


# -- dead letters, in a real process ----------------------------------------------------------


@pytest.fixture
def failed_shop(shop: Path) -> Path:
    """An app whose import leaves one dead letter in its in-memory store."""
    with (shop / "shop.py").open("a") as source:
        source.write('messaging.run("async")\n')
    return shop


def test_dead_letter_list_as_a_process(failed_shop: Path) -> None:
    done = busway(failed_shop, "dead-letter", "list", "--app", "shop:messaging")

    assert done.returncode == 0, done.stderr
    header, row, count = done.stdout.splitlines()[-3:]  # after the handlers' own output
    assert header.split()[:5] == ["ID", "CHANNEL", "HANDLER", "KEY", "ATTEMPTS"]
    assert row.split()[1:5] == ["async", "shop.greet", "-", "1"]  # sent with no ordering key
    assert row.endswith("ValueError: cannot greet bad")
    assert count == "1 dead letter(s)"


def test_dead_letter_replay_and_delete_all_as_a_process(failed_shop: Path) -> None:
    replayed = busway(failed_shop, "dead-letter", "replay", "--all", "--app", "shop:messaging")
    deleted = busway(
        failed_shop, "dead-letter", "delete", "--all", "--yes", "--app", "shop:messaging"
    )
    missing = busway(failed_shop, "dead-letter", "show", "nope", "--app", "shop:messaging")

    assert (replayed.returncode, replayed.stdout.splitlines()[-1]) == (
        0,
        "replayed 1 dead letter(s)",
    )
    assert (deleted.returncode, deleted.stdout.splitlines()[-1]) == (0, "deleted 1 dead letter(s)")
    assert missing.returncode == 1
    assert "no dead letter has id 'nope'" in missing.stderr


# -- on SQLite, where state outlives each process --------------------------------------------

SQL_SHOP = """
import os
from dataclasses import dataclass

from busway import (
    CommandBus, Messaging, RetryPolicy, SqlChannel, asynchronous, command_handler,
)


@dataclass
class Greet:
    name: str


@asynchronous("async")
class AsyncCommandBus(CommandBus):
    pass


@command_handler
def greet(command: Greet) -> None:
    if command.name == "bad" and not os.environ.get("GREET_EVERYONE"):
        raise ValueError("cannot greet bad")
    print(f"hello {command.name}", flush=True)


messaging = Messaging(
    handlers=[greet],
    channels=[SqlChannel("async")],
    database="sqlite:///shop.db",
    retry=RetryPolicy(retries=0),
)


def enqueue(*names: str, key: str | None = None) -> None:
    bus = messaging.gateway(AsyncCommandBus)
    for name in names:
        bus.send(Greet(name), ordering_key=key)
"""


@pytest.fixture
def sql_shop(tmp_path: Path) -> Path:
    (tmp_path / "sqlshop.py").write_text(SQL_SHOP)
    return tmp_path


def enqueue(directory: Path, *names: str, key: str | None = None) -> None:
    code = f"import sqlshop; sqlshop.enqueue(*{names!r}, key={key!r}); sqlshop.messaging.close()"
    subprocess.run([sys.executable, "-c", code], cwd=directory, check=True, timeout=60)


def test_setup_sql_prints_the_ddl(sql_shop: Path) -> None:
    done = busway(sql_shop, "setup", "--sql", "--app", "sqlshop:messaging")

    assert done.returncode == 0, done.stderr
    assert "CREATE TABLE IF NOT EXISTS busway_messages" in done.stdout
    assert "busway_messages" not in _tables(sql_shop)


def _tables(directory: Path) -> str:
    with sqlite3.connect(directory / "shop.db") as connection:
        rows = connection.execute("select name from sqlite_master").fetchall()
    return " ".join(name for (name,) in rows)


def test_a_sql_application_from_setup_to_replay(sql_shop: Path) -> None:
    app = ("--app", "sqlshop:messaging")
    setup = busway(sql_shop, "setup", *app)
    assert (setup.returncode, setup.stdout.strip()) == (0, "set up async"), setup.stderr
    assert "busway_messages" in _tables(sql_shop)

    enqueue(sql_shop, "ann", "bad", "bob")
    listed = busway(sql_shop, "channels", *app)
    name, kind, depth, oldest = listed.stdout.splitlines()[1].split()
    assert (name, kind, depth) == ("async", "SqlChannel", "3")
    assert oldest.endswith("s"), "the oldest message's age, in seconds"

    ran = busway(sql_shop, "run", "async", "--until-empty", *app)
    assert ran.returncode == 0, ran.stderr
    # A failure rolls back its whole claimed batch, so "ann" may be greeted again on retry.
    assert set(ran.stdout.splitlines()) == {"hello ann", "hello bob"}

    letters = busway(sql_shop, "dead-letter", "list", *app)
    assert letters.stdout.splitlines()[-1] == "1 dead letter(s)"
    letter_id = letters.stdout.splitlines()[1].split()[0]
    shown = busway(sql_shop, "dead-letter", "show", letter_id, *app)
    assert "error:      builtins.ValueError: cannot greet bad" in shown.stdout
    assert 'raise ValueError("cannot greet bad")' in shown.stdout

    replayed = busway(sql_shop, "dead-letter", "replay", letter_id, *app)
    assert replayed.stdout.strip() == "replayed 1 dead letter(s)"
    fixed = busway(sql_shop, "run", "async", "--until-empty", *app, env={"GREET_EVERYONE": "1"})
    assert fixed.stdout.splitlines() == ["hello bad"]
    assert busway(sql_shop, "dead-letter", "list", *app).stdout.endswith("0 dead letter(s)\n")


def test_deleting_a_sql_dead_letter_by_id(sql_shop: Path) -> None:
    app = ("--app", "sqlshop:messaging")
    busway(sql_shop, "setup", *app)
    enqueue(sql_shop, "bad", "bad")
    busway(sql_shop, "run", "async", "--until-empty", *app)
    first = busway(sql_shop, "dead-letter", "list", *app).stdout.splitlines()[1].split()[0]

    deleted = busway(sql_shop, "dead-letter", "delete", first, *app)

    assert deleted.stdout.strip() == "deleted 1 dead letter(s)"
    remaining = busway(sql_shop, "dead-letter", "list", *app).stdout.splitlines()
    assert remaining[-1] == "1 dead letter(s)"
    assert first not in remaining[1]


def test_the_keys_dead_letters_hold_back_are_listed_and_skipping_lets_them_go(
    sql_shop: Path,
) -> None:
    app = ("--app", "sqlshop:messaging")
    busway(sql_shop, "setup", *app)
    enqueue(sql_shop, "ann", "bad", "bob", "cat", key="shop-7")
    enqueue(sql_shop, "dan")
    ran = busway(sql_shop, "run", "async", "--until-empty", *app)
    assert ran.stdout.splitlines() == ["hello ann", "hello dan"], ran.stderr
    letter_id = busway(sql_shop, "dead-letter", "list", *app).stdout.splitlines()[1].split()[0]

    blocked = busway(sql_shop, "dead-letter", "blocked", *app)
    assert blocked.returncode == 0, blocked.stderr
    assert blocked.stdout.splitlines()[1].split() == ["async", "shop-7", "2", letter_id]
    assert blocked.stdout.splitlines()[-1] == "1 key(s) held back"

    skipped = busway(sql_shop, "dead-letter", "skip", letter_id, *app)
    assert skipped.stdout.strip() == "skipped 1 dead letter(s)"
    after = busway(sql_shop, "run", "async", "--until-empty", *app)
    assert after.stdout.splitlines() == ["hello bob", "hello cat"]
    assert busway(sql_shop, "dead-letter", "blocked", *app).stdout.splitlines()[-1] == (
        "0 key(s) held back"
    )


# -- dead letters, in-process (the in-memory store lives in this process) ---------------------


@dataclass
class Charge:
    amount: int


@asynchronous("payments")
class PaymentBus(CommandBus):
    pass


class Cashier:
    def __init__(self) -> None:
        self.broken = True
        self.charged: list[int] = []

    @command_handler
    def charge(self, command: Charge) -> None:
        if self.broken:
            raise KeyError(f"no card for {command.amount}")
        self.charged.append(command.amount)


CHARGE = f"{__name__}.Cashier.charge"


@dataclass
class Shop:
    messaging: Messaging
    cashier: Cashier
    clock: FakeClock


@pytest.fixture
def cashier_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[Shop]:
    cashier = Cashier()
    clock = FakeClock()
    messaging = Messaging(
        handlers=[cashier],
        channels=[InMemoryChannel("payments")],
        retry=RetryPolicy(retries=0),
        clock=clock,
    )
    module = types.ModuleType("cashier_app")
    module.messaging = messaging  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cashier_app", module)
    monkeypatch.setenv("BUSWAY_APP", "cashier_app:messaging")
    bus = messaging.gateway(PaymentBus)
    bus.send(Charge(10))
    run_until_idle(messaging)
    clock.advance(3600)
    bus.send(Charge(20))
    run_until_idle(messaging)
    yield Shop(messaging, cashier, clock)


def invoke(*args: str, input: str | None = None) -> Any:
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


def letter_ids(shop: Shop) -> list[str]:
    letters = sorted(shop.messaging.dead_letters.list(), key=lambda letter: letter.failed_at)
    return [letter.id for letter in letters]


def test_list_shows_letters_oldest_first(cashier_app: Shop) -> None:
    first, second = letter_ids(cashier_app)
    result = invoke("dead-letter", "list")

    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert [line.split()[0] for line in lines[1:3]] == [first, second]
    assert "KeyError: 'no card for 10'" in lines[1]
    assert lines[-1] == "2 dead letter(s)"


@pytest.mark.parametrize(
    ("options", "count"),
    [
        (["--channel", "payments"], 2),
        (["--channel", "elsewhere"], 0),
        (["--handler", CHARGE], 2),
        (["--error", "KeyError"], 2),
        (["--error", "builtins.KeyError"], 2),
        (["--error", "ValueError"], 0),
        (["--since", "30m"], 1),
    ],
)
def test_list_filters(cashier_app: Shop, options: list[str], count: int) -> None:
    result = invoke("dead-letter", "list", *options)

    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == f"{count} dead letter(s)"


def test_show_prints_everything_about_one_letter(cashier_app: Shop) -> None:
    letter_id = letter_ids(cashier_app)[0]
    result = invoke("dead-letter", "show", letter_id)

    assert result.exit_code == 0
    assert f"id:         {letter_id}" in result.output
    assert f"handler:    {CHARGE}" in result.output
    assert "error:      builtins.KeyError: 'no card for 10'" in result.output
    assert '{"amount":10}' in result.output
    assert "Traceback (most recent call last)" in result.output


def test_replay_sends_letters_back_to_their_handler(cashier_app: Shop) -> None:
    first, _ = letter_ids(cashier_app)
    cashier_app.cashier.broken = False

    result = invoke("dead-letter", "replay", first)
    run_until_idle(cashier_app.messaging)

    assert result.output == "replayed 1 dead letter(s)\n"
    assert cashier_app.cashier.charged == [10]
    assert len(cashier_app.messaging.dead_letters.list()) == 1


def test_replay_all_with_a_filter(cashier_app: Shop) -> None:
    cashier_app.cashier.broken = False

    result = invoke("dead-letter", "replay", "--all", "--since", "10m")
    run_until_idle(cashier_app.messaging)

    assert result.output == "replayed 1 dead letter(s)\n"
    assert cashier_app.cashier.charged == [20]


def test_a_replay_that_fails_again_returns_to_the_store(cashier_app: Shop) -> None:
    invoke("dead-letter", "replay", "--all")
    run_until_idle(cashier_app.messaging)

    assert len(cashier_app.messaging.dead_letters.list()) == 2


def test_delete_by_id_and_note_unknown_ids(cashier_app: Shop) -> None:
    first, second = letter_ids(cashier_app)
    result = invoke("dead-letter", "delete", first, "unknown")

    assert result.exit_code == 0
    assert "deleted 1 dead letter(s)" in result.output
    assert "1 ID(s) matched no dead letter" in result.output
    assert letter_ids(cashier_app) == [second]


def test_delete_all_asks_first(cashier_app: Shop) -> None:
    refused = CliRunner().invoke(cli, ["dead-letter", "delete", "--all"], input="n\n")
    assert refused.exit_code == 1
    assert len(letter_ids(cashier_app)) == 2

    accepted = invoke("dead-letter", "delete", "--all", input="y\n")
    assert "deleted 2 dead letter(s)" in accepted.output
    assert letter_ids(cashier_app) == []


@pytest.mark.parametrize(
    "args",
    [
        ["dead-letter", "replay"],
        ["dead-letter", "replay", "some-id", "--all"],
        ["dead-letter", "delete", "some-id", "--channel", "payments"],
    ],
)
def test_ids_or_all_is_a_usage_error_otherwise(cashier_app: Shop, args: list[str]) -> None:
    result = CliRunner().invoke(cli, args)

    assert result.exit_code == 2
    assert "--all" in result.output


def test_show_an_unknown_letter_fails(cashier_app: Shop) -> None:
    result = CliRunner().invoke(cli, ["dead-letter", "show", "unknown"])

    assert result.exit_code == 1
    assert "no dead letter has id 'unknown'" in result.output


# -- option values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1048576", 1048576),
        ("512M", 512 * 1024**2),
        ("1G", 1024**3),
        ("1.5g", int(1.5 * 1024**3)),
        ("2048k", 2048 * 1024),
        ("1GiB", 1024**3),
        ("256 MB", 256 * 1024**2),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("30s", 30.0),
        ("10m", 600.0),
        ("1.5h", 5400.0),
        ("1d", 86400.0),
        ("500ms", 0.5),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "M", "12Q", "-1G", "one"])
def test_parse_size_rejects_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


# -- a script sends, a worker that imports it handles -----------------------------------------

SCRIPT = """
import sys
from dataclasses import dataclass
from pathlib import Path

from busway import (
    CommandBus, Messaging, RetryPolicy, SqlChannel, asynchronous, command_handler, retry_policy,
)

HERE = Path(__file__).parent


class Unlucky(Exception):
    pass


@dataclass
class PlaceOrder:
    order_id: str


@asynchronous("jobs")
class Jobs(CommandBus):
    pass


@command_handler
@retry_policy(RetryPolicy(retries=1, initial_delay=0, jitter=0, retry_on=[Unlucky]))
def place(command: PlaceOrder) -> None:
    tries = HERE / "tries.txt"
    tries.write_text(tries.read_text() + "x" if tries.exists() else "x")
    if tries.read_text() == "x":
        raise Unlucky("the first try fails")
    (HERE / "placed.txt").write_text(command.order_id)


messaging = Messaging(
    handlers=[place], channels=[SqlChannel("jobs")], database=f"sqlite:///{HERE / 'shop.db'}"
)

if __name__ == "__main__":
    messaging.setup()
    messaging.gateway(Jobs).send(PlaceOrder(sys.argv[1]))
"""


def test_what_a_script_sends_is_handled_by_a_worker_that_imports_the_script(
    tmp_path: Path,
) -> None:
    """Run as ``python orders.py``, the script's classes live in ``__main__``; the worker
    imports it as ``orders``. Types and handlers travel under the script's name in both."""
    (tmp_path / "orders.py").write_text(textwrap.dedent(SCRIPT))
    sent = subprocess.run(
        [sys.executable, "orders.py", "o-7"], cwd=tmp_path, capture_output=True, text=True
    )
    assert sent.returncode == 0, sent.stderr

    done = busway(tmp_path, "run", "jobs", "--until-empty", "--app", "orders:messaging")

    assert done.returncode == 0, done.stderr
    assert (tmp_path / "placed.txt").read_text() == "o-7"
    assert (tmp_path / "tries.txt").read_text() == "xx"  # retried by the handler's own policy
    letters = sqlite3.connect(tmp_path / "shop.db").execute(
        "SELECT COUNT(*) FROM busway_dead_letters"
    )
    assert letters.fetchone() == (0,)


# -- the version ------------------------------------------------------------------------------


def test_version_is_the_installed_package_version(tmp_path: Path) -> None:
    import importlib.metadata

    import busway as package

    done = busway(tmp_path, "--version")

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"busway, version {package.__version__}"
    assert package.__version__ == importlib.metadata.version("busway")
    assert package.__version__[0].isdigit()
