"""A message published inside Django's transaction.atomic() commits or rolls back with the
ORM's writes, on Django's own connection."""

from __future__ import annotations

import pytest
from django.db import connections, transaction
from django.test import Client
from djtest.messaging import TABLE, OrderPlaced, OutboxBus, messaging_for
from djtest.models import Delivered, Order

from busway import ConfigurationError
from conftest import empty, rows_seen_from_outside

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


class Failed(Exception):
    pass


def test_a_message_published_in_atomic_is_delivered_once_committed(alias, messaging):
    events = messaging.gateway(OutboxBus)
    with transaction.atomic(using=alias):
        Order.objects.using(alias).create(number="o-1")
        events.publish(OrderPlaced("o-1"))
        assert rows_seen_from_outside(alias) == 0  # a worker sees nothing before commit
    assert rows_seen_from_outside(alias) == 1

    assert messaging.run("outbox").handled == 1
    assert list(Delivered.objects.using(alias).values_list("number", flat=True)) == ["o-1"]
    assert messaging.channel("outbox").depth() == 0


def test_a_message_published_in_a_failed_atomic_is_never_delivered(alias, messaging):
    events = messaging.gateway(OutboxBus)
    with pytest.raises(Failed), transaction.atomic(using=alias):
        Order.objects.using(alias).create(number="o-2")
        events.publish(OrderPlaced("o-2"))
        raise Failed

    assert not Order.objects.using(alias).exists()
    assert messaging.channel("outbox").depth() == 0
    assert messaging.run("outbox").handled == 0
    assert not Delivered.objects.using(alias).exists()


def test_a_rolled_back_savepoint_takes_its_message_with_it(alias, messaging):
    events = messaging.gateway(OutboxBus)
    with transaction.atomic(using=alias):
        events.publish(OrderPlaced("kept"))
        with pytest.raises(Failed), transaction.atomic(using=alias):
            events.publish(OrderPlaced("undone"))
            raise Failed
    assert messaging.run("outbox").handled == 1
    assert list(Delivered.objects.using(alias).values_list("number", flat=True)) == ["kept"]


def test_outside_atomic_a_message_commits_at_once(alias, messaging):
    assert connections[alias].get_autocommit()
    messaging.gateway(OutboxBus).publish(OrderPlaced("o-3"))
    assert rows_seen_from_outside(alias) == 1
    assert messaging.run("outbox").handled == 1


@pytest.fixture
def atomic_requests(alias):
    settings_dict = connections[alias].settings_dict
    settings_dict["ATOMIC_REQUESTS"] = True
    yield
    settings_dict["ATOMIC_REQUESTS"] = False


def test_atomic_requests_commit_a_view_that_succeeds(alias, messaging, atomic_requests):
    response = Client().post(f"/orders/{alias}/o-4")
    assert response.status_code == 200
    assert rows_seen_from_outside(alias) == 1
    assert messaging.run("outbox").handled == 1
    assert Delivered.objects.using(alias).filter(number="o-4").exists()


def test_atomic_requests_roll_back_the_message_of_a_failing_view(alias, messaging, atomic_requests):
    response = Client(raise_request_exception=False).post(f"/orders/{alias}/o-5?fail=1")
    assert response.status_code == 500
    assert not Order.objects.using(alias).exists()
    assert rows_seen_from_outside(alias) == 0
    assert messaging.run("outbox").handled == 0


def test_a_publish_in_atomic_on_another_database_is_refused():
    messaging = messaging_for("default")  # settings.BUSWAY's; "other" is not busway's
    empty("default", TABLE)
    events = messaging.gateway(OutboxBus)
    with pytest.raises(ConfigurationError) as refused, transaction.atomic(using="other"):
        events.publish(OrderPlaced("o-6"))
    assert "settings.BUSWAY['DATABASE']" in str(refused.value)
    assert "transaction.atomic(using='other')" in str(refused.value)
    assert rows_seen_from_outside("default") == 0

    with transaction.atomic(using="other"), transaction.atomic(using="default"):
        events.publish(OrderPlaced("o-7"))  # inside busway's database's block too: joined
    assert rows_seen_from_outside("default") == 1
    assert messaging.run("outbox").handled == 1
