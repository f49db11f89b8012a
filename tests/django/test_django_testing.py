"""Testing a Django project's messaging inside the test's own transaction (pytest-django's
default, Django's TestCase): a worker run in the test sees what the test wrote."""

from __future__ import annotations

import pytest
from djtest.messaging import OrderPlaced, OutboxBus, messaging_for
from djtest.models import Delivered

from busway.testing import record, run_until_idle


@pytest.mark.django_db(databases="__all__")
def test_run_until_idle_handles_what_the_test_published_in_its_transaction(alias):
    messaging = messaging_for(alias)
    with record(messaging) as recorded:
        messaging.gateway(OutboxBus).publish(OrderPlaced("t-1"))
        run_until_idle(messaging)

    assert recorded.on_channel("outbox") == [OrderPlaced("t-1")]
    assert Delivered.objects.using(alias).filter(number="t-1").exists()
    assert messaging.channel("outbox").depth() == 0
