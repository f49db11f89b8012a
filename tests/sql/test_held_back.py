"""A consumer held back by the others' keys backs off by itself: its count is its channel's,
in its thread or task, so a worker's other channels claim at once."""

from __future__ import annotations

import pytest

from busway import SqlChannel
from busway.sql.consumer import SqlConsumer
from busway.sql.waiting import BUSY_PAUSE


class Nothing:
    pass


def consumer_of(messaging, name: str) -> SqlConsumer:
    return messaging.channel(name)._consumer


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_channel_held_back_leaves_the_other_channels_of_its_worker_alone(make_messaging):
    messaging = make_messaging([], [SqlChannel("blocked"), SqlChannel("jobs")])
    blocked, jobs = consumer_of(messaging, "blocked"), consumer_of(messaging, "jobs")
    due_now = int(blocked.clock() * 1000) - 1

    blocked.found_nothing(due_now)
    blocked.found_nothing(due_now)
    assert blocked.held_back() and blocked.busy_pause() == BUSY_PAUSE * 2
    assert not jobs.held_back() and jobs.busy_pause() == BUSY_PAUSE

    jobs.found_nothing(None)  # an empty channel: no reason to forget the other's back-off
    jobs.claimed()
    assert blocked.busy_pause() == BUSY_PAUSE * 2
    blocked.claimed()
    assert not blocked.held_back()


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql", "mariadb"], indirect=True)
def test_held_back_on_mariadb_a_claim_takes_a_quarter_of_its_batch(make_messaging, database_url):
    """MariaDB takes no runs of keys: held back, its claims take fewer messages, which
    spreads the keys over more consumers. PostgreSQL narrows its first messages only when it
    takes runs of their followers; SQLite's one writer takes its turn per batch anyway."""
    messaging = make_messaging([], [SqlChannel("jobs")])
    jobs = consumer_of(messaging, "jobs")
    assert jobs.heads_limit(100) == 100

    jobs.found_nothing(int(jobs.clock() * 1000) - 1)
    narrowed = jobs.heads_limit(100)
    jobs.relaying = True
    forwarding = jobs.heads_limit(100)

    on_mariadb = database_url.startswith("mysql")
    on_postgresql = database_url.startswith("postgresql")
    assert narrowed == (25 if on_mariadb or on_postgresql else 100)
    assert forwarding == 100  # a relay's batches grow instead
