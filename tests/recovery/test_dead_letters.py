"""Dead letters on real databases: replay, replay failing again, delete, poison messages, event
subscribers failing alone, and the ``busway dead-letter`` commands."""

import uuid
from dataclasses import dataclass

import msgspec
import pytest
from recovery_app import Job, JobBus, Jobs, effects
from recovery_support import (
    busway,
    effect_counts,
    environment,
    make_tables,
    waiting,
)
from recovery_support import effects as effect_rows
from sqlalchemy import insert
from sqlalchemy.orm import Session

from busway import (
    EventBus,
    Headers,
    InMemoryChannel,
    RetryPolicy,
    SqlChannel,
    asynchronous,
    event_handler,
)
from busway.channels.base import Envelope
from busway.testing import FakeClock, record

WORK = "recovery_app.Jobs.work"


def test_a_replayed_dead_letter_is_handled_once(app, database_url):
    jobs = Jobs()
    messaging = app(jobs=jobs)
    messaging.gateway(JobBus).send(Job("fail-1"))
    assert messaging.run("jobs").failed == 1
    (letter,) = messaging.dead_letters.list()
    assert effect_counts(database_url) == {}

    jobs.failing = False  # the bug is fixed
    with record(messaging) as recorded:
        assert messaging.dead_letters.replay([letter.id]) == 1
    (replayed,) = recorded.envelopes("jobs")
    assert replayed.headers["busway.handler"] == WORK
    assert "busway.attempt" not in replayed.headers
    assert replayed.headers["id"] == letter.message_id
    assert messaging.dead_letters.list() == []
    assert messaging.dead_letters.get(letter.id) is None

    result = messaging.run("jobs")

    assert (result.handled, result.failed) == (1, 0)
    assert effect_counts(database_url) == {"fail-1": 1}
    assert jobs.calls == ["fail-1", "fail-1"]
    assert messaging.channel("jobs").depth() == 0


def test_a_replayed_letter_that_fails_again_returns_to_the_store(app, database_url):
    clock = FakeClock()
    jobs = Jobs()
    messaging = app(jobs=jobs, clock=clock, retry=RetryPolicy(retries=1, initial_delay=5, jitter=0))
    messaging.gateway(JobBus).send(Job("fail-1"))
    messaging.run("jobs")
    clock.advance(5)
    messaging.run("jobs")
    (first,) = messaging.dead_letters.list()
    assert first.attempts == 2

    assert messaging.dead_letters.replay([first.id]) == 1
    assert messaging.run("jobs").failed == 1
    assert messaging.dead_letters.list() == []  # the replay starts its retries afresh
    (retry,) = waiting(database_url)
    assert retry.headers["busway.attempt"] == 1
    clock.advance(5)
    assert messaging.run("jobs").failed == 1

    (again,) = messaging.dead_letters.list()
    assert again.id != first.id
    assert again.message_id == first.message_id
    assert (again.handler, again.error_type, again.attempts) == (
        WORK,
        "recovery_app.Refused",
        2,
    )
    assert again.body == first.body
    assert jobs.calls == ["fail-1"] * 4
    assert effect_counts(database_url) == {}
    assert messaging.channel("jobs").depth() == 0


def test_deleted_letters_are_gone_and_the_rest_stay(app):
    messaging = app()
    for name in ("fail-1", "fail-2", "fail-3"):
        messaging.gateway(JobBus).send(Job(name))
    messaging.run("jobs")
    letters = {
        msgspec.json.decode(letter.body)["id"]: letter for letter in messaging.dead_letters.list()
    }
    assert sorted(letters) == ["fail-1", "fail-2", "fail-3"]

    assert messaging.dead_letters.delete([letters["fail-1"].id, letters["fail-3"].id]) == 2
    assert messaging.dead_letters.delete([letters["fail-1"].id, "no-such-letter"]) == 0

    assert [letter.id for letter in messaging.dead_letters.list()] == [letters["fail-2"].id]
    assert messaging.dead_letters.get(letters["fail-1"].id) is None
    assert messaging.dead_letters.replay([letters["fail-3"].id]) == 0  # nothing to replay
    assert messaging.channel("jobs").depth() == 0


# -- poison messages ---------------------------------------------------------------------------


def job_headers(**changes):
    headers = {
        "id": str(uuid.uuid4()),
        "correlation_id": "c",
        "timestamp": 1_700_000_000.0,
        "type": "recovery_app.Job",
        "content_type": "application/json",
        "busway.kind": "command",
    }
    headers.update(changes)
    return headers


POISON = {
    "not-json": (b"\xff{not json", job_headers(), "busway.errors.ConversionError", WORK),
    "wrong-shape": (b'{"id": [1, 2]}', job_headers(), "busway.errors.ConversionError", WORK),
    "unknown-type": (
        b'{"id": "x"}',
        job_headers(type="elsewhere.Job"),
        "busway.errors.MalformedMessageError",
        None,
    ),
}


@pytest.mark.parametrize("mode", ["transaction", "lease"])
def test_poison_messages_are_dead_letters_at_once_and_the_next_is_handled(app, database_url, mode):
    jobs = Jobs()
    retry = RetryPolicy(retries=5, instant_retries=2)  # none of it for poison
    messaging = app(jobs=jobs, mode=mode, retry=retry)
    channel = messaging.channel("jobs")
    for body, headers, _, _ in POISON.values():
        channel.send(Envelope(body, headers))
        messaging.gateway(JobBus).send(Job(f"after-{headers['id'][:8]}"))

    result = messaging.run("jobs")

    assert (result.handled, result.failed) == (6, 3)
    assert len(jobs.calls) == 3 and all(name.startswith("after-") for name in jobs.calls)
    assert sorted(effect_counts(database_url).values()) == [1, 1, 1]
    letters = {letter.message_id: letter for letter in messaging.dead_letters.list()}
    for kind, (body, headers, error_type, handler) in POISON.items():
        letter = letters[headers["id"]]
        assert (letter.error_type, letter.handler, letter.attempts) == (error_type, handler, 1), (
            kind
        )
        assert letter.body == body
        assert letter.error_message and letter.traceback
    assert channel.depth() == 0  # no retry was queued for any of them


# -- event subscribers -------------------------------------------------------------------------


@dataclass
class Paid:
    id: str


@asynchronous("jobs")
class PaidEvents(EventBus):
    pass


class Subscribers:
    def __init__(self) -> None:
        self.calls: dict[str, list[int]] = {"steady": [], "flaky": []}

    @event_handler
    def steady(self, event: Paid, session: Session, headers: Headers) -> None:
        self.calls["steady"].append(headers.attempt)
        session.execute(insert(effects).values(job=event.id, worker="steady"))

    @event_handler
    def flaky(self, event: Paid, session: Session, headers: Headers) -> None:
        self.calls["flaky"].append(headers.attempt)
        session.execute(insert(effects).values(job=event.id, worker="flaky"))
        if len(self.calls["flaky"]) < 3:
            raise RuntimeError("flaky is down")


@pytest.mark.parametrize("channel", ["transaction", "lease", "memory"])
def test_one_failing_subscriber_is_retried_alone(make_messaging, database_url, channel):
    make_tables(database_url)
    clock = FakeClock()
    subscribers = Subscribers()
    messaging = make_messaging(
        [subscribers],
        [InMemoryChannel("jobs") if channel == "memory" else SqlChannel("jobs", mode=channel)],
        clock=clock,
        retry=RetryPolicy(retries=3, initial_delay=1, jitter=0),
    )
    with record(messaging) as recorded:
        messaging.gateway(PaidEvents).publish(Paid("p-1"))
        assert messaging.run("jobs").failed == 1
        clock.advance(1)
        assert messaging.run("jobs").failed == 1
        clock.advance(2)
        assert messaging.run("jobs").failed == 0

    retries = recorded.envelopes("jobs")[1:]
    assert [envelope.headers["busway.handler"] for envelope in retries] == [
        f"{__name__}.Subscribers.flaky"
    ] * 2
    assert subscribers.calls == {"steady": [0], "flaky": [0, 1, 2]}
    assert sorted(effect_rows(database_url)) == [("p-1", "flaky"), ("p-1", "steady")]
    assert messaging.dead_letters.list() == []


# -- busway dead-letter, as real processes -----------------------------------------------------


def letter_rows(output):
    """ID -> the rest of each row of ``busway dead-letter list``."""
    lines = output.splitlines()
    assert lines[0].split()[:3] == ["ID", "CHANNEL", "HANDLER"]
    return {line.split()[0]: line.split()[1:] for line in lines[1:-1]}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # each process ~1 s
def test_the_dead_letter_commands_operate_a_sql_store(app, database_url, tmp_path):
    messaging = app()
    for name in ("fail-1", "ok", "fail-2"):
        messaging.gateway(JobBus).send(Job(name))
    messaging.channel("jobs").send(Envelope(b'{"id": "x"}', job_headers(type="gone.Job")))
    messaging.run("jobs")
    by_job = {
        (msgspec.json.decode(letter.body)["id"]): letter.id
        for letter in messaging.dead_letters.list()
    }
    env = environment(url=database_url)
    cli = ("--app", "recovery_app:messaging")

    listed = busway(tmp_path, env, "dead-letter", "list", *cli)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[-1] == "3 dead letter(s)"
    rows = letter_rows(listed.stdout)
    assert sorted(rows) == sorted(by_job.values())
    assert rows[by_job["fail-1"]][:4] == ["jobs", WORK, "-", "1"]  # no ordering key
    assert rows[by_job["x"]][:4] == ["jobs", "-", "-", "1"]
    refused = busway(tmp_path, env, "dead-letter", "list", "--error", "Refused", *cli)
    assert sorted(letter_rows(refused.stdout)) == sorted([by_job["fail-1"], by_job["fail-2"]])

    shown = busway(tmp_path, env, "dead-letter", "show", by_job["fail-1"], *cli)
    assert shown.returncode == 0, shown.stderr
    assert f"handler:    {WORK}" in shown.stdout
    assert "error:      recovery_app.Refused: fail-1" in shown.stdout
    assert '{"id":"fail-1"}' in shown.stdout
    assert "raise Refused(job.id)" in shown.stdout

    replayed = busway(tmp_path, env, "dead-letter", "replay", by_job["fail-1"], *cli)
    assert replayed.stdout.strip() == "replayed 1 dead letter(s)", replayed.stderr
    fixed = environment(url=database_url, failing=0)
    ran = busway(tmp_path, fixed, "run", "jobs", "--until-empty", *cli)
    assert ran.returncode == 0, ran.stderr
    assert effect_counts(database_url) == {"ok": 1, "fail-1": 1}

    deleted = busway(
        tmp_path,
        env,
        "dead-letter",
        "delete",
        "--all",
        "--yes",
        "--error",
        "MalformedMessageError",
        *cli,
    )
    assert deleted.stdout.strip() == "deleted 1 dead letter(s)", deleted.stderr
    assert [letter.id for letter in messaging.dead_letters.list()] == [by_job["fail-2"]]
    assert messaging.channel("jobs").depth() == 0


# -- headers out of reason ---------------------------------------------------------------------


def test_an_absurd_attempt_count_never_keeps_a_message_from_the_store(app):
    jobs = Jobs()
    messaging = app(jobs=jobs)
    attempts = {}
    for attempt in (-5, 2**31, 2**63 - 1):
        headers = job_headers(**{"busway.attempt": attempt})
        attempts[headers["id"]] = 1 if attempt < 0 else 1_000_001
        messaging.channel("jobs").send(Envelope(b"\xffnot json", headers))
    messaging.gateway(JobBus).send(Job("next"))

    result = messaging.run("jobs")  # a letter its column cannot hold would stop the run here

    assert (result.handled, result.failed) == (4, 3)
    letters = messaging.dead_letters.list()
    assert {letter.message_id: letter.attempts for letter in letters} == attempts
    assert jobs.calls == ["next"]
    assert messaging.channel("jobs").depth() == 0


def test_a_negative_attempt_count_buys_no_extra_retries(app):
    clock = FakeClock()
    jobs = Jobs()
    messaging = app(jobs=jobs, clock=clock, retry=RetryPolicy(retries=1, initial_delay=1))
    headers = job_headers(**{"busway.attempt": -1000})
    messaging.channel("jobs").send(Envelope(b'{"id": "fail-1"}', headers))

    messaging.run("jobs")
    clock.advance(2)
    messaging.run("jobs")

    assert jobs.calls == ["fail-1", "fail-1"]
    (letter,) = messaging.dead_letters.list()
    assert letter.attempts == 2


def test_a_long_message_id_from_another_transport_still_makes_a_letter(
    make_messaging, database_url
):
    make_tables(database_url)
    messaging = make_messaging([Jobs()], [InMemoryChannel("jobs")])
    headers = job_headers(id="x" * 300)
    messaging.channel("jobs").send(Envelope(b"\xffnot json", headers))

    messaging.run("jobs")

    (letter,) = messaging.dead_letters.list()
    assert letter.headers["id"] == "x" * 300
    assert messaging.channel("jobs").depth() == 0
