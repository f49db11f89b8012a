"""Workers whose handlers write through the Django ORM: the writes, the claim and the
acknowledgement of their message are one transaction on Django's connection."""

from __future__ import annotations

import os
from pathlib import Path

import djsettings
import pytest
from django.conf import settings
from django.db import connections, transaction
from djtest.messaging import OrderPlaced, OutboxBus, Record, WorkBus
from djtest.models import Counter, Delivered, Effect
from sqlalchemy import create_engine, text

from conftest import rows_seen_from_outside
from workers import deaths_until_drained, finish, kill_when, start_worker

HERE = Path(__file__).parent
pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def send_work(messaging, alias, count):
    bus = messaging.gateway(WorkBus)
    with transaction.atomic(using=alias):
        for key in range(count):
            bus.send(Record(key))
    assert messaging.channel("work").depth() == count


def test_a_worker_handler_writes_through_the_orm_in_the_message_transaction(alias, messaging):
    Counter.objects.using(alias).create(worker="test")
    send_work(messaging, alias, 12)

    result = messaging.run("work")

    assert result.handled == 12 and result.failed == 0
    keys = sorted(Effect.objects.using(alias).values_list("key", flat=True))
    assert keys == list(range(12))
    assert Counter.objects.using(alias).get(worker="test").n == 12
    assert messaging.channel("work").depth() == 0


def test_a_failing_handler_leaves_no_orm_write_behind(alias, messaging):
    Counter.objects.using(alias).create(worker="test")
    Effect.objects.using(alias).create(key=3, worker="before")  # Record(3) fails on it
    send_work(messaging, alias, 5)

    messaging.run("work")

    counted = Counter.objects.using(alias).get(worker="test").n
    assert counted == 4  # the failed handler's update went with its savepoint
    assert [letter.channel for letter in messaging.dead_letters.list()] == ["work"]
    assert Effect.objects.using(alias).get(key=3).worker == "before"


def _worker(alias, name, *options, block_at=None, marker=None, batch=5, exit_on=None):
    databases = djsettings.as_worker_sees_them(settings.DATABASES)
    environment = {
        djsettings.WORKER_DATABASES: databases,
        "DJTEST_ALIAS": alias,
        "DJTEST_WORKER": name,
        "DJTEST_BATCH": str(batch),
    }
    if exit_on is not None:
        environment["DJTEST_EXIT_ON"] = str(exit_on)
    if block_at is not None:
        environment.update(DJTEST_BLOCK_AT=str(block_at), DJTEST_MARKER=str(marker))
    saved = dict(os.environ)
    os.environ.update(environment)
    try:
        return start_worker(HERE, "django_worker", *options)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_workers_killed_mid_handler_leave_every_orm_effect_exactly_once(alias, messaging, tmp_path):
    total, batch, block_at, kills = 25, 5, 7, 3
    send_work(messaging, alias, total)
    in_flight = []
    for attempt in range(kills):
        name = f"killed-{attempt}"
        Counter.objects.using(alias).create(worker=name)
        marker = tmp_path / f"marker-{attempt}"
        worker = _worker(alias, name, block_at=block_at, marker=marker, batch=batch)
        in_flight.append(int(kill_when(marker, worker)))
        # Its first batch committed; the batch in hand, its rows written, did not.
        assert Counter.objects.using(alias).get(worker=name).n == batch
        assert not Effect.objects.using(alias).filter(key=in_flight[-1]).exists()
        assert messaging.channel("work").depth() == total - batch * (attempt + 1)

    Counter.objects.using(alias).create(worker="final")
    finish(_worker(alias, "final", batch=batch))

    keys = sorted(Effect.objects.using(alias).values_list("key", flat=True))
    assert keys == list(range(total))  # each effect once: the key is unique
    counts = dict(Counter.objects.using(alias).values_list("worker", "n"))
    assert sum(counts.values()) == total  # and each counted once
    assert counts["final"] == total - batch * kills
    assert set(in_flight) <= set(keys)
    assert messaging.channel("work").depth() == 0
    assert messaging.dead_letters.list() == []


def test_a_message_that_kills_its_worker_is_dead_lettered_after_max_crashes(alias, messaging):
    """The notes of the messages in hand commit beside the batch's transaction: each death
    counts, although the batch it killed rolled back."""
    total, poison = 8, 2
    send_work(messaging, alias, total)

    def start(restart):
        Counter.objects.using(alias).get_or_create(worker=f"crash-{restart}")
        return _worker(alias, f"crash-{restart}", batch=4, exit_on=poison)

    deaths = deaths_until_drained(start, bound=3)

    assert deaths >= 3  # Messaging(max_crashes=3), the default
    letters = messaging.dead_letters.list()
    assert [letter.error_type for letter in letters] == ["busway.errors.WorkerDiedError"]
    keys = sorted(Effect.objects.using(alias).values_list("key", flat=True))
    assert keys == [key for key in range(total) if key != poison]
    assert sum(Counter.objects.using(alias).values_list("n", flat=True)) == total - 1
    assert messaging.channel("work").depth() == 0


def test_a_command_handled_at_once_writes_in_the_open_block_or_its_own(alias, messaging):
    Counter.objects.using(alias).create(worker="test")
    messaging.command_bus.send(Record(1))  # no block open: its own, committed
    assert rows_seen_from_outside(alias, "busway_dj_effect") == 1

    with pytest.raises(RuntimeError), transaction.atomic(using=alias):
        messaging.command_bus.send(Record(2))  # a savepoint of this block
        assert Effect.objects.using(alias).filter(key=2).exists()
        raise RuntimeError("the block fails after the handler")
    assert sorted(Effect.objects.using(alias).values_list("key", flat=True)) == [1]
    assert Counter.objects.using(alias).get(worker="test").n == 1


_SESSION = {
    "postgresql": ("SELECT pg_backend_pid()", "SELECT pg_terminate_backend({})"),
    "mariadb": ("SELECT CONNECTION_ID()", "KILL {}"),
}


@pytest.mark.parametrize("alias", list(_SESSION), indirect=True)
def test_a_worker_whose_connection_the_server_killed_goes_on_with_a_new_one(messaging, alias):
    Counter.objects.using(alias).create(worker="test")
    send_work(messaging, alias, 3)
    find, kill = _SESSION[alias]
    with connections[alias].cursor() as cursor:
        cursor.execute(find)
        (session,) = cursor.fetchone()
    engine = create_engine(messaging.database.url)
    try:
        with engine.connect() as other:
            other.execute(text(kill.format(int(session))))
    finally:
        engine.dispose()

    assert messaging.run("work").handled == 3
    assert Counter.objects.using(alias).get(worker="test").n == 3


def test_two_worker_processes_handle_each_message_once(alias, messaging):
    total = 300
    send_work(messaging, alias, total)
    for name in ("w1", "w2"):
        Counter.objects.using(alias).create(worker=name)

    workers = [
        _worker(alias, "w1", batch=10),
        _worker(alias, "w2", "--concurrency", "2", batch=10),  # two threads, two connections
    ]
    for worker in workers:
        finish(worker, timeout=120)

    keys = sorted(Effect.objects.using(alias).values_list("key", flat=True))
    assert keys == list(range(total))
    counts = dict(Counter.objects.using(alias).values_list("worker", "n"))
    assert counts["w1"] + counts["w2"] == total
    assert messaging.channel("work").depth() == 0
    assert messaging.dead_letters.list() == []


def test_the_inbox_record_commits_with_the_handler_and_not_without(alias, messaging):
    events = messaging.gateway(OutboxBus)
    events.publish(OrderPlaced("kept"))
    Delivered.objects.using(alias).create(number="failing")  # its handler fails on it
    events.publish(OrderPlaced("failing"))

    messaging.run("outbox")

    assert Delivered.objects.using(alias).filter(number="kept").exists()
    assert len(messaging.dead_letters.list()) == 1
    # One deduplication record: the handler that took effect; the failed one's went with it.
    assert rows_seen_from_outside(alias, "busway_inbox") == 1


def test_on_commit_callbacks_of_a_handler_run_once_its_batch_commits(alias, messaging):
    import djtest.messaging

    djtest.messaging.committed.clear()
    djtest.messaging.in_block.clear()
    events = messaging.gateway(OutboxBus)
    Delivered.objects.using(alias).create(number="fails")  # its handler fails on it
    for number in ("first", "fails", "last"):
        events.publish(OrderPlaced(number))

    messaging.run("outbox")

    assert all(djtest.messaging.in_block)  # the batch's block: on_commit waits for it
    # "first" ran twice: the batch was redone after "fails" failed. Its first run's callback
    # went with the rolled-back try; only what committed called back, once.
    assert len(djtest.messaging.in_block) == 3
    assert djtest.messaging.committed == ["first", "last"]
