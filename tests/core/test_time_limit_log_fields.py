"""A handler abandoned at its time limit logs the same structured fields as a retry or a dead
letter does (``tests/recovery/test_failure_log_fields.py``)."""

import threading
from dataclasses import dataclass

from busway import (
    CommandBus,
    InMemoryChannel,
    Messaging,
    RetryPolicy,
    asynchronous,
    command_handler,
    handler_timeout,
)

FIELDS = ("channel", "handler", "message_id", "dead_letter_id", "attempt", "error_type")


@dataclass
class Hang:
    id: str


@asynchronous("jobs")
class Bus(CommandBus):
    pass


def test_an_abandoned_handler_logs_its_fields(caplog):
    release = threading.Event()

    @command_handler
    @handler_timeout(0.1)
    def hangs(job: Hang) -> None:
        release.wait(10)

    messaging = Messaging(
        handlers=[hangs], channels=[InMemoryChannel("jobs")], retry=RetryPolicy(retries=0)
    )
    messaging.gateway(Bus).send(Hang("h-1"))
    try:
        result = messaging.run("jobs")
    finally:
        release.set()

    assert result.failed == 1
    (letter,) = messaging.dead_letters.list()
    abandoned, lettered = [r for r in caplog.records if hasattr(r, "error_type")]
    assert "abandoned" in abandoned.getMessage()
    expected = {
        "channel": "jobs",
        "handler": letter.handler,
        "message_id": letter.message_id,
        "dead_letter_id": None,
        "attempt": 1,
        "error_type": "busway.errors.HandlerTimeout",
    }
    assert {name: getattr(abandoned, name) for name in FIELDS} == expected
    assert {name: getattr(lettered, name) for name in FIELDS} == {
        **expected,
        "dead_letter_id": letter.id,
    }
