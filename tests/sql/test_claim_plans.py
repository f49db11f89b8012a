"""A PostgreSQL claim does not depend on the planner's statistics: on a backlog analyzed while
the table was empty (a fresh install, autovacuum not yet come), the planner would read and
sort every due message at each claim; planned first, the claim scans the dequeue index and
stops at its batch's last message. A consumer plans its claims once one was slow."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from sqlalchemy import text

from busway import CommandBus, SqlChannel, asynchronous, command_handler
from busway.sql.consumer import SLOW_CLAIM
from busway.sql.statements import PLANNED, UNPLANNED


@dataclass
class Job:
    key: str
    n: int


@asynchronous("jobs")
class Jobs(CommandBus):
    pass


class Worker:
    @command_handler
    def job(self, command: Job) -> None:
        pass


def plan_of(connection, statement, parameters) -> str:
    compiled = statement.compile(dialect=connection.dialect)
    sql = str(compiled)
    values = {**compiled.params, **parameters}
    rows = connection.exec_driver_sql(f"EXPLAIN {sql}", values).scalars()
    return "\n".join(rows)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("keyed", [False, True], ids=["unkeyed", "keyed"])
def test_a_claim_planned_first_scans_the_dequeue_index_of_a_table_analyzed_empty(
    make_messaging, keyed
):
    messaging = make_messaging([Worker()], [SqlChannel("jobs")])
    with messaging.database_engine.connect() as connection:
        connection.execute(text("ANALYZE busway_messages"))  # empty: its statistics say so
        connection.commit()
    bus = messaging.gateway(Jobs)
    with messaging.transaction():
        for n in range(3_000):
            bus.send(Job(f"k{n % 20}", n), ordering_key=f"k{n % 20}" if keyed else None)
    consumer = messaging.channel("jobs")._consumer

    with messaging.database_engine.connect() as connection:
        sort, jit, *_ = connection.execute(PLANNED).one()
        planned = plan_of(connection, *consumer.claim(100))
        connection.execute(UNPLANNED, {"sort": sort, "jit": jit})
        after = connection.execute(text("SELECT current_setting('enable_sort')")).scalar()

    assert "Index Scan using busway_messages_dequeue" in planned
    assert "Sort" not in planned
    assert after == sort == "on"  # the handlers run with the planner as it was


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_slow_claim_has_the_next_ones_planned_first(make_messaging):
    messaging = make_messaging([Worker()], [SqlChannel("jobs")])
    consumer = messaging.channel("jobs")._consumer
    assert not consumer.plans_claims()
    consumer.claim_took(SLOW_CLAIM / 2)
    assert not consumer.plans_claims()
    consumer.claim_took(SLOW_CLAIM * 2)
    assert consumer.plans_claims()
