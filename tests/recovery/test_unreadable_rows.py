"""Rows of ``busway_messages`` that no busway wrote: whatever a row holds, the channel goes on.

Corrupt rows are inserted straight into the table, between good messages. Each one whose
headers cannot be read ends as exactly one dead letter that keeps its body and its raw
headers; each one that can be read but not dispatched is a dead letter with the core's
reason; the good messages around them take effect exactly once (the business oracle, the
``recovery_effects`` rows) and nothing is left on the channel. In transaction mode, where the
dead letters commit with the batch, and in lease mode; with ``run`` and ``arun``; and with the
real ``busway run --until-empty``, which exits 0.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from recovery_app import Job, JobBus
from recovery_support import busway, effect_counts, environment, waiting
from sqlalchemy import create_engine, text

from busway.channels.reading import RAW_HEADERS, raw_of
from dbsupport import sync_url

UNREADABLE = "busway.errors.UnreadableMessageError"
DEEP = 100_000


@dataclass(frozen=True)
class Row:
    """A corrupt row: its headers (text, bytes, or a function of a good message's headers),
    its body, and what becomes of it."""

    name: str
    headers: Any
    outcome: str  # "unreadable", "rejected" (a dead letter the core decides), "handled",
    # "forwarded" (sent on to the channel again, then handled)
    backends: tuple[str, ...] = ("sqlite", "postgresql", "mariadb")
    body: bytes | None = None  # a good job's body when None
    as_text: bool = False  # bytes stored as TEXT (SQLite keeps them unchecked)
    body_as_text: bool = False  # the good job's body stored as TEXT


def changed(**changes: Any) -> Any:
    """Headers of a good message, with ``changes`` (None removes the key)."""

    def make(good: dict[str, Any]) -> str:
        headers = {**good, **changes}
        return msgspec.json.encode({k: v for k, v in headers.items() if v is not None}).decode()

    return make


def with_lone_surrogate(good: dict[str, Any]) -> str:
    return '{"note": "\\ud800", ' + msgspec.json.encode(good).decode()[1:]


def truncated(good: dict[str, Any]) -> str:
    encoded = msgspec.json.encode(good).decode()
    return encoded[: len(encoded) // 2]


SQLITE = ("sqlite",)
NO_POSTGRESQL = ("sqlite", "mariadb")  # PostgreSQL's text holds no NUL
ROWS = [
    Row("invalid-json", "{not json", "unreadable"),
    Row("empty", "", "unreadable"),
    Row("blank", "   \n", "unreadable"),
    Row("array", "[]", "unreadable"),
    Row("array-of-objects", '[{"type": "x"}]', "unreadable"),
    Row("null", "null", "unreadable"),
    Row("number", "42", "unreadable"),
    Row("string", '"headers"', "unreadable"),
    Row("true", "true", "unreadable"),
    Row("truncated", truncated, "unreadable"),
    Row("trailing-garbage", '{"type": "x"} tail', "unreadable"),
    Row("two-objects", "{}{}", "unreadable"),
    Row("single-quotes", "{'type': 'x'}", "unreadable"),
    Row("unquoted-key", "{type: 1}", "unreadable"),
    Row("unterminated-string", '{"type": "x', "unreadable"),
    Row("raw-newline-in-string", '{"type": "a\nb"}', "unreadable"),
    Row("number-out-of-range", '{"a": 1e400}', "unreadable"),
    Row("integer-of-5000-digits", '{"a": 1' + "0" * 5000 + "}", "unreadable"),
    Row("nested-arrays", '{"a": ' + "[" * DEEP + "]" * DEEP + "}", "unreadable"),
    Row("nested-objects", '{"a": ' * DEEP + "1" + "}" * DEEP, "unreadable"),
    Row("byte-order-mark", "\ufeff{}", "unreadable"),
    Row("raw-nul", '{"type": "\x00"}', "unreadable", NO_POSTGRESQL),
    Row("invalid-utf8-text", b'{"type": "\xff\xfe"}', "unreadable", SQLITE, as_text=True),
    Row("invalid-utf8-blob", b'{"type": "\xc3\x28"}', "unreadable", SQLITE),
    Row("good-headers-as-blob", lambda good: msgspec.json.encode(good), "handled", SQLITE),
    Row("body-as-text", changed(), "handled", SQLITE, body_as_text=True),
    Row("no-headers-at-all", "{}", "rejected"),
    Row("attempt-as-text", changed(**{"busway.attempt": "three"}), "handled"),
    Row("attempt-huge", changed(**{"busway.attempt": 10**30}), "handled"),
    Row("type-as-list", changed(type=["x"]), "rejected"),
    Row("kind-as-number", changed(**{"busway.kind": 7}), "rejected"),
    Row("expires-at-as-text", changed(**{"busway.expires_at": "soon"}), "handled"),
    Row("deliver-at-huge", changed(**{"busway.deliver_at": 10**30}), "handled"),
    Row("slip-as-number", changed(**{"busway.slip": 3}), "rejected"),
    Row("slip-as-object", changed(**{"busway.slip": {"a": 1}}), "rejected"),
    Row("handler-as-list", changed(**{"busway.handler": [1]}), "rejected"),
    Row("route-as-object", changed(**{"busway.route": {"k": 1}}), "rejected"),
    Row(
        "slip-due-beyond-any-date",
        changed(**{"busway.slip": "jobs", "busway.deliver_at": 1e300}),
        "forwarded",
    ),
    Row(
        "slip-due-before-any-date",
        changed(**{"busway.slip": "jobs", "busway.deliver_at": -(10**30)}),
        "forwarded",
    ),
    Row("retry-as-number", changed(**{"busway.retry": 5}), "handled"),
    Row("id-as-list", changed(id=[1, 2]), "handled"),
    Row("lone-surrogate", with_lone_surrogate, "unreadable"),
    Row("body-not-json", changed(), "rejected", body=b"\xff not json"),
]


def rows_for(url: str) -> list[Row]:
    backend = url.split(":", 1)[0].split("+", 1)[0]
    backend = "mariadb" if backend == "mysql" else backend
    return [row for row in ROWS if backend in row.backends]


def insert_row(url: str, row: Row, good: dict[str, Any], job: str) -> bytes:
    """Insert ``row`` for ``job`` due now; the raw headers as inserted."""
    headers = row.headers(good) if callable(row.headers) else row.headers
    body = row.body if row.body is not None else msgspec.json.encode({"id": job})
    headers_value = "CAST(:headers AS TEXT)" if row.as_text else ":headers"
    body_value = "CAST(:body AS TEXT)" if row.body_as_text else ":body"
    now = int(time.time() * 1000)
    engine = create_engine(sync_url(url))
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO busway_messages (channel, available_at, queued_at, message_id, "
                    f"headers, body, deliveries) VALUES ('jobs', :now, :now, :id, "
                    f"{headers_value}, {body_value}, 0)"
                ),
                {"now": now, "id": job, "headers": headers, "body": body},
            )
    finally:
        engine.dispose()
    return headers if isinstance(headers, bytes) else headers.encode("utf-8", "surrogatepass")


def good_headers(url: str) -> dict[str, Any]:
    (row,) = waiting(url)
    return row.headers


def fill(messaging: Any, url: str) -> tuple[list[str], dict[str, tuple[Row, bytes]]]:
    """Good jobs with one corrupt row between each two, and a failing job now and then; the
    good jobs, and the others by their job."""
    bus = messaging.gateway(JobBus)
    bus.send(Job("good-0"))
    template = good_headers(url)
    good, corrupt = ["good-0"], {}
    for n, row in enumerate(rows_for(url), start=1):
        job = f"row-{row.name}"
        headers = {**template, "id": job, "correlation_id": job}
        corrupt[job] = row, insert_row(url, row, headers, job)
        bus.send(Job(f"good-{n}"))
        good.append(f"good-{n}")
        if n % 5 == 0:  # a handler fails now and then: in redo mode, its batch is redone
            bus.send(Job(f"fail-{n}"))
            corrupt[f"fail-{n}"] = FAILING, b""
    return good, corrupt


FAILING = Row("failing-handler", "", "rejected")


def job_of(letter: Any) -> str:
    try:
        return str(msgspec.json.decode(letter.body)["id"])
    except (msgspec.DecodeError, KeyError, TypeError):
        return str(letter.headers.get("id"))


def check(messaging: Any, url: str, good: list[str], corrupt: dict[str, tuple[Row, bytes]]):
    handled = {job for job, (row, _) in corrupt.items() if row.outcome in ("handled", "forwarded")}
    assert effect_counts(url) == Counter({job: 1 for job in [*good, *handled]})
    letters = messaging.dead_letters.list()
    by_job: dict[str, list[Any]] = {}
    unreadable = [letter for letter in letters if letter.error_type == UNREADABLE]
    for letter in letters:
        if letter.error_type != UNREADABLE:
            by_job.setdefault(job_of(letter), []).append(letter)
    expected_unreadable = {
        job: raw for job, (row, raw) in corrupt.items() if row.outcome == "unreadable"
    }
    assert sorted(raw_of(letter.headers) for letter in unreadable) == sorted(
        expected_unreadable.values()
    )
    for letter in unreadable:
        assert letter.channel == "jobs" and letter.handler is None and letter.attempts == 1
        assert "cannot be read" in letter.error_message
        assert letter.body.startswith(b'{"id":"row-')
    rejected = {job for job, (row, _) in corrupt.items() if row.outcome == "rejected"}
    assert set(by_job) == rejected
    assert all(len(found) == 1 for found in by_job.values()), by_job
    assert waiting(url) == []
    assert messaging.channel("jobs").depth() == 0


@pytest.mark.parametrize("front", ["sync", "asyncio"])
@pytest.mark.parametrize("mode", ["transaction", "redo_batches", "lease"])
def test_every_corrupt_row_is_one_dead_letter_and_the_good_ones_are_handled_once(
    app, database_url, mode, front
):
    redo = mode == "redo_batches"
    messaging = app(mode="transaction" if redo else mode, batch_size=7)
    messaging.channel("jobs").redo_batches = redo  # without savepoints, the batch redone
    good, corrupt = fill(messaging, database_url)

    result = messaging.run("jobs") if front == "sync" else asyncio.run(messaging.arun("jobs"))

    dead = sum(row.outcome in ("unreadable", "rejected") for row, _ in corrupt.values())
    forwarded = sum(row.outcome == "forwarded" for row, _ in corrupt.values())
    assert (result.handled, result.failed) == (len(good) + len(corrupt) + forwarded, dead)
    check(messaging, database_url, good, corrupt)


def test_a_corrupt_row_rolled_back_with_its_batch_leaves_no_dead_letter(app, database_url):
    """In transaction mode the dead letter commits with the batch: a batch that fails to
    commit keeps the corrupt row, and no letter is left of it."""
    messaging = app(batch_size=10)
    insert_row(database_url, ROWS[0], {}, "row-invalid-json")
    messaging.gateway(JobBus).send(Job("fail-later"))
    messaging.gateway(JobBus).send(Job("good"))
    store = messaging._runtime.dead_letters
    # The unreadable row's letter is written in the batch, then the store fails on the next.
    store.add = Boom(store.add).add
    with pytest.raises(RuntimeError, match="store down"):
        messaging.run("jobs")
    del store.add
    assert rows_left(database_url) == 3 and messaging.dead_letters.list() == []

    assert messaging.run("jobs").handled == 3
    letters = messaging.dead_letters.list()
    assert sorted(letter.error_type for letter in letters) == [UNREADABLE, "recovery_app.Refused"]
    (letter,) = [letter for letter in letters if letter.error_type == UNREADABLE]
    assert raw_of(letter.headers) == b"{not json"
    assert effect_counts(database_url) == {"good": 1}  # a failed handler's write is undone
    assert rows_left(database_url) == 0


def rows_left(url: str) -> int:
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT COUNT(*) FROM busway_messages")).scalar_one()
    finally:
        engine.dispose()


class Boom:
    def __init__(self, add: Any) -> None:
        self.real_add = add
        self.calls = 0

    def add(self, letter: Any) -> None:
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("store down")
        self.real_add(letter)


def test_busway_run_until_empty_exits_0_past_corrupt_rows(app, database_url, tmp_path):
    messaging = app()
    good, corrupt = fill(messaging, database_url)

    done = busway(
        tmp_path,
        environment(url=database_url),
        "run", "jobs", "--app", "recovery_app:messaging", "--until-empty",
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    check(messaging, database_url, good, corrupt)


def test_an_unreadable_letter_can_be_shown_kept_at_replay_and_deleted(app, database_url, tmp_path):
    messaging = app()
    insert_row(database_url, ROWS[0], {}, "row-invalid-json")
    assert messaging.run("jobs").failed == 1
    (letter,) = messaging.dead_letters.list()
    env = environment(url=database_url)
    command = ("--app", "recovery_app:messaging")

    shown = busway(tmp_path, env, "dead-letter", "show", letter.id, *command)
    assert shown.returncode == 0, shown.stderr
    assert "cannot be read" in shown.stdout and "{not json" in shown.stdout

    replayed = busway(tmp_path, env, "dead-letter", "replay", letter.id, *command)
    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 0 dead letter(s)" in replayed.stdout
    assert "cannot be read" in replayed.stderr
    assert [kept.id for kept in messaging.dead_letters.list()] == [letter.id]
    assert waiting(database_url) == []

    deleted = busway(tmp_path, env, "dead-letter", "delete", letter.id, *command)
    assert deleted.returncode == 0, deleted.stderr
    assert messaging.dead_letters.list() == []


def test_an_unreadable_letter_whose_headers_were_fixed_is_replayed(app, database_url):
    messaging = app()
    messaging.gateway(JobBus).send(Job("fixed"))
    template = good_headers(database_url)
    messaging.run("jobs")
    truncated_row = next(row for row in ROWS if row.name == "truncated")
    insert_row(database_url, truncated_row, template, "fixed-again")
    assert messaging.run("jobs").failed == 1
    (letter,) = messaging.dead_letters.list()
    fixed = msgspec.json.encode({**template, "id": "fixed-again"}).decode()
    engine = create_engine(sync_url(database_url))
    with engine.begin() as connection:  # an operator repairs the headers kept in the letter
        connection.execute(
            text("UPDATE busway_dead_letters SET headers = :headers WHERE id = :id"),
            {
                "headers": msgspec.json.encode({RAW_HEADERS: fixed}).decode(),
                "id": letter.id,
            },
        )
    engine.dispose()

    assert messaging.dead_letters.replay([letter.id]) == 1
    assert messaging.run("jobs").handled == 1
    assert effect_counts(database_url) == {"fixed": 1, "fixed-again": 1}
    assert messaging.dead_letters.list() == []


header_text = st.one_of(
    st.text(max_size=60),
    st.binary(max_size=60).map(lambda data: data.decode("latin-1")),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(st.text(max_size=12), children, max_size=4)
        ),
        max_leaves=8,
    ).map(lambda value: msgspec.json.encode(value).decode() if _encodable(value) else "x"),
)
header_values = st.dictionaries(
    st.sampled_from(
        ["id", "type", "busway.kind", "busway.attempt", "busway.expires_at", "busway.slip",
         "busway.deliver_at", "busway.handler", "busway.route", "busway.retry", "timestamp"]
    ),
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=8) | st.lists(st.integers(), max_size=2),
    max_size=4,
)  # fmt: skip


def _encodable(value: Any) -> bool:
    try:
        msgspec.json.encode(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return True


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_no_header_text_or_value_blocks_the_channel(app, database_url):
    messaging = app(batch_size=3)
    messaging.gateway(JobBus).send(Job("template"))
    template = good_headers(database_url)
    assert messaging.run("jobs").handled == 1
    probes = iter(range(10**9))

    @settings(
        max_examples=100,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(raw=header_text, values=header_values, use_values=st.booleans())
    def no_case_blocks(raw, values, use_values):
        n = next(probes)
        job, after = f"probe-{n}", f"after-{n}"
        headers = {**template, "id": job, **values} if use_values else raw
        if use_values and not _encodable(headers):
            return
        encoded = msgspec.json.encode(headers).decode() if use_values else headers
        insert_row(database_url, Row("probe", encoded, "any"), {}, job)
        messaging.gateway(JobBus).send(Job(after))
        letters_before = len(messaging.dead_letters.list())

        result = messaging.run("jobs")

        counts = effect_counts(database_url)
        assert counts[after] == 1
        letters = len(messaging.dead_letters.list()) - letters_before
        assert counts[job] + letters <= 1  # handled, dead-lettered, or dropped by its ttl
        assert result.handled >= 2
        assert waiting(database_url) == []

    no_case_blocks()


def test_a_dead_letter_row_made_unreadable_is_still_listed(app, database_url):
    messaging = app()
    messaging.gateway(JobBus).send(Job("fail-1"))
    assert messaging.run("jobs").failed == 1
    (letter,) = messaging.dead_letters.list()
    engine = create_engine(sync_url(database_url))
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE busway_dead_letters SET headers = '[not json' WHERE id = :id"),
            {"id": letter.id},
        )
    engine.dispose()

    (listed,) = messaging.dead_letters.list()
    assert raw_of(listed.headers) == b"[not json"
    assert messaging.dead_letters.replay([letter.id]) == 0  # kept: its headers cannot be read
    assert messaging.dead_letters.delete([letter.id]) == 1
