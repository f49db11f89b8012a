"""Time to live: a message that waited longer than its ttl is dropped, not handled, not kept."""

from recovery_app import Job, JobBus, Jobs
from recovery_support import effect_counts, waiting

from busway import RetryPolicy
from busway.testing import FakeClock


def test_a_message_past_its_ttl_is_dropped(app, database_url, caplog):
    clock = FakeClock()
    jobs = Jobs()
    messaging = app(jobs=jobs, clock=clock)
    bus = messaging.gateway(JobBus)
    bus.send(Job("short"), ttl=1)
    bus.send(Job("long"), ttl=10)
    bus.send(Job("forever"))
    bus.send(Job("late"), delay=1, ttl=0.5)  # expires before it is due

    clock.advance(1.5)
    result = messaging.run("jobs")

    assert (result.handled, result.failed) == (4, 0)
    assert jobs.calls == ["long", "forever"]
    assert effect_counts(database_url) == {"long": 1, "forever": 1}
    assert messaging.dead_letters.list() == []
    assert waiting(database_url) == []
    dropped = [record.getMessage() for record in caplog.records if "dropped" in record.getMessage()]
    assert len(dropped) == 2


def test_a_message_within_its_ttl_is_handled(app, database_url):
    clock = FakeClock()
    jobs = Jobs()
    messaging = app(jobs=jobs, clock=clock)
    messaging.gateway(JobBus).send(Job("j-1"), ttl=1)

    clock.advance(1)  # the last moment it may be handled
    messaging.run("jobs")

    assert jobs.calls == ["j-1"]
    assert effect_counts(database_url) == {"j-1": 1}


def test_a_replayed_dead_letter_is_handled_whatever_its_ttl(app, database_url):
    clock = FakeClock()
    jobs = Jobs()
    messaging = app(jobs=jobs, clock=clock, retry=RetryPolicy(retries=0))
    messaging.gateway(JobBus).send(Job("fail-1"), ttl=60)
    messaging.run("jobs")
    (letter,) = messaging.dead_letters.list()

    clock.advance(3600)  # the bug is fixed an hour later, and the letter replayed
    jobs.failing = False
    messaging.dead_letters.replay([letter.id])
    messaging.run("jobs")

    assert effect_counts(database_url) == {"fail-1": 1}
