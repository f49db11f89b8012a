"""A handler that kills its worker process: the message is dead-lettered after a bound.

Real worker processes on real databases end themselves with ``os._exit(1)`` in the middle of
one poisoned command among good ones; the test restarts them until the channel is drained,
counting the deaths.
"""

from pathlib import Path

import crash_worker
import pytest
import sql_worker
from sqlalchemy import create_engine, func, select

from busway import Messaging, SqlChannel
from busway.errors import ConfigurationError
from dbsupport import create_tables, sync_url
from workers import deaths_until_drained, start_worker

HERE = Path(__file__).parent
MAX_CRASHES = 2  # the least: the poisoned message's batch-mates count one death each
GOOD, POISON = 20, 7


def send_backlog(url, mode):
    create_tables(url, sql_worker.metadata)
    messaging = crash_worker.build(url, mode=mode)
    messaging.setup()
    bus = messaging.gateway(sql_worker.WorkBus)
    with messaging.transaction():
        for index in range(GOOD + 1):
            bus.send(sql_worker.Record(index))
    messaging.close()


def restart_until_drained(url, mode, *options):
    """Start a worker, again each time one dies; how many died. Fails past the bound."""
    return deaths_until_drained(
        lambda restart: start_worker(
            HERE,
            "crash_worker",
            url,
            f"w{restart}",
            "--poison",
            str(POISON),
            "--max-crashes",
            str(MAX_CRASHES),
            "--mode",
            mode,
            *options,
        ),
        MAX_CRASHES,
    )


def business_state(url):
    """Handled ids, the count of handled rows, the sum of the counters, messages left."""
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            ids = connection.execute(select(sql_worker.handled.c.id)).scalars().all()
            rows = connection.execute(
                select(func.count()).select_from(sql_worker.handled)
            ).scalar_one()
            counted = connection.execute(select(func.sum(sql_worker.counters.c.n))).scalar_one()
            left = connection.execute(
                select(func.count()).select_from(crash_worker.build(url).channel("work").table)
            ).scalar_one()
    finally:
        engine.dispose()
    return sorted(ids), rows, counted, left


@pytest.mark.parametrize(
    ("mode", "front_door"),
    [("transaction", "run"), ("transaction", "arun"), ("lease", "run")],
)
def test_a_message_that_kills_its_worker_is_dead_lettered_after_max_crashes(
    database_url, mode, front_door
):
    send_backlog(database_url, mode)

    deaths = restart_until_drained(
        database_url, mode, *(["--asyncio"] if front_door == "arun" else [])
    )

    assert deaths == MAX_CRASHES
    ids, rows, counted, left = business_state(database_url)
    good = [index for index in range(GOOD + 1) if index != POISON]
    assert ids == good  # every good command's business row, each once
    assert rows == len(good)
    assert counted == len(good)
    assert left == 0
    messaging = crash_worker.build(database_url)
    try:
        letters = messaging.dead_letters.list()
    finally:
        messaging.close()
    assert [letter.body for letter in letters] == [b'{"id":%d}' % POISON]
    assert letters[0].error_type == "busway.errors.WorkerDiedError"
    assert f"the worker died {MAX_CRASHES} times handling it" in letters[0].error_message


@pytest.mark.parametrize("max_crashes", [0, 1, -3, 2.5, True, "3"])
def test_max_crashes_is_at_least_two_or_none(max_crashes):
    with pytest.raises(ConfigurationError, match=f"max_crashes={max_crashes!r}"):
        Messaging(max_crashes=max_crashes)


def test_max_crashes_none_turns_the_guard_off():
    Messaging(channels=[SqlChannel("work", database="sqlite://")], max_crashes=None)
