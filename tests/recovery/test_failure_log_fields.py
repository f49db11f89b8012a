"""Every log record of a retry or a dead letter carries structured fields, the dead letter's
own id among them: the one ``messaging.dead_letters.get`` (``busway dead-letter show``) takes."""

import json
import logging

from recovery_app import Job, JobBus, Jobs

from busway import RetryPolicy
from busway.channels.base import Envelope
from busway.cli.logs import JsonFormatter
from busway.testing import FakeClock

FIELDS = ("channel", "handler", "message_id", "dead_letter_id", "attempt", "error_type")
REFUSED = "recovery_app.Refused"


def failure_records(caplog):
    return [record for record in caplog.records if hasattr(record, "error_type")]


def fields_of(record):
    return {name: getattr(record, name) for name in FIELDS}


def test_retries_and_the_dead_letter_log_their_fields(app, caplog):
    caplog.set_level(logging.INFO, logger="busway")
    clock = FakeClock()
    messaging = app(jobs=Jobs(), clock=clock, retry=RetryPolicy(retries=1, jitter=0))
    bus = messaging.gateway(JobBus)
    bus.send(Job("fail-1"))
    messaging.run("jobs")
    clock.advance(5)
    messaging.run("jobs")

    (letter,) = messaging.dead_letters.list()
    message_id = letter.message_id
    retried, lettered = failure_records(caplog)
    handler = letter.handler
    assert handler is not None and handler.endswith("work")
    assert fields_of(retried) == {
        "channel": "jobs",
        "handler": handler,
        "message_id": message_id,
        "dead_letter_id": None,
        "attempt": 1,
        "error_type": REFUSED,
    }
    assert retried.levelno == logging.WARNING
    assert fields_of(lettered) == {
        "channel": "jobs",
        "handler": handler,
        "message_id": message_id,
        "dead_letter_id": letter.id,
        "attempt": 2,
        "error_type": REFUSED,
    }
    assert lettered.levelno == logging.ERROR
    # The id in the log is the one the store knows the letter by.
    shown = messaging.dead_letters.get(lettered.dead_letter_id)
    assert shown is not None and shown.message_id == message_id
    # busway's JSON log lines carry them.
    line = json.loads(JsonFormatter().format(lettered))
    assert {name: line[name] for name in FIELDS} == fields_of(lettered)


def test_a_rejected_message_logs_its_fields_without_a_handler(app, caplog):
    messaging = app(jobs=Jobs())
    messaging.channel("jobs").send(_envelope_without_type())

    messaging.run("jobs")

    (letter,) = messaging.dead_letters.list()
    (record,) = failure_records(caplog)
    assert fields_of(record) == {
        "channel": "jobs",
        "handler": None,
        "message_id": "m-1",
        "dead_letter_id": letter.id,
        "attempt": 1,
        "error_type": "busway.errors.MalformedMessageError",
    }
    assert messaging.dead_letters.get(record.dead_letter_id) is not None


def _envelope_without_type():
    return Envelope(b"{}", {"id": "m-1", "busway.kind": "command"})
