"""The SQL one ``SqlChannel`` runs on its table, free of any I/O: the claim, the lease, the
release, the acknowledgement and the keep-back, each with its parameters (``execute(*...)``),
the INSERT compiled once per dialect, the queries of the next due time, the depth and the age,
and the DDL with PostgreSQL's NOTIFY trigger.

Times come in as seconds since the epoch; the table keeps milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Dialect,
    LargeBinary,
    Row,
    Table,
    and_,
    bindparam,
    cast,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.schema import CreateIndex, CreateTable

NOTIFY_CHANNEL = "busway_messages"
"""The PostgreSQL notification channel the trigger tells of every message inserted."""

_KEPT_BACK_PAUSE = 1.0
"""Seconds a message whose send failed waits before it is tried again; doubled each time."""
_LONGEST_KEPT_BACK_PAUSE = 60.0


PLANNED = text(
    "SELECT current_setting('enable_sort'), current_setting('jit'), "
    "set_config('enable_sort', 'off', true), set_config('jit', 'off', true)"
)
"""Before a claim on PostgreSQL: plan it by the dequeue index, whatever the planner's
statistics. A queue's table is often just filled, or never analyzed (autovacuum off): its
statistics say it is nearly empty, and the planner would read every due message and sort
them, checking each one's key, at every claim (tens of milliseconds at 20,000 messages,
against half a millisecond for the ordered scan that stops at the batch's last message).
Without sorting, the scan of the dequeue index is the one plan left; the claim's estimated
cost, high without sorting, must not set off JIT compilation either. Returns the settings
before, for ``UNPLANNED``."""

UNPLANNED = text("SELECT set_config('enable_sort', :sort, true), set_config('jit', :jit, true)")
"""After the claim, in the batch's transaction: the planner as it was, for the handlers."""


_LAST = 2**62
"""Above any ``available_at``, ``seq`` or ``position``."""


class Statements:
    """The statements of the channel ``name`` in ``table`` on a ``backend``.

    ``letters``: the dead letter table in the same database, whose letters of a key hold back
    the later messages of that key; ``priorities``: whether the claim takes higher priorities
    first."""

    def __init__(
        self,
        table: Table,
        name: str,
        backend: str,
        *,
        letters: Table | None = None,
        priorities: bool = False,
    ) -> None:
        self.table = table
        self.name = name
        self.backend = backend
        self.priorities = priorities
        self.order: tuple[Any, ...] = (table.c.available_at, table.c.seq)
        if priorities:
            self.order = (table.c.priority.desc(), *self.order)
        self.claimable = claimable(table, letters, backend)
        self._inserts: dict[Dialect, tuple[str, tuple[str, ...]]] = {}
        headers: ColumnElement[Any] = table.c.headers
        body: ColumnElement[Any] = table.c.body
        if backend == "sqlite":
            # As bytes: text that is not UTF-8 would fail the whole claim in the driver.
            headers = cast(headers, LargeBinary).label("headers")
            body = cast(body, LargeBinary).label("body")
        claimed = select(
            table.c.seq,
            table.c.message_id,
            headers,
            body,
            table.c.deliveries,
            table.c.ordering_key,
            func.coalesce(table.c.position, table.c.seq).label("position"),
        )
        self.columns = list(claimed.selected_columns)
        """What a claim reads of each row."""
        due = (table.c.channel == name, table.c.available_at <= bindparam("now"), self.claimable)
        claim = claimed.where(*due)
        if backend == "mysql":
            # MariaDB evaluates no subquery bound while it plans: the bound is read first
            # (``window_bound``), and given.
            at: Any = bindparam("bound_at")
            within: ColumnElement[bool] = or_(
                table.c.available_at < at,
                and_(table.c.available_at == at, table.c.seq <= bindparam("bound_seq")),
            )
        else:
            within = window(table, name)
        windowed = claimed.where(within, *due)
        self._window_bound = (
            select(table.c.available_at, table.c.seq)
            .where(table.c.channel == name, table.c.available_at <= bindparam("now"))
            .order_by(table.c.available_at, table.c.seq)
            .offset(WINDOW - 1)
            .limit(1)
        )
        self._claim, self._claim_windowed = (
            statement.order_by(*self.order).limit(bindparam("limit"))
            for statement in (claim, windowed)
        )
        if backend != "sqlite":
            self._claim = self._claim.with_for_update(skip_locked=True)
            self._claim_windowed = self._claim_windowed.with_for_update(skip_locked=True)
        self._ack = delete(table).where(table.c.seq.in_(bindparam("seqs", expanding=True)))
        self._next_due = select(func.min(table.c.available_at)).where(table.c.channel == name)

    def ddl(self, dialect: Dialect) -> list[str]:
        statements = [str(CreateTable(self.table, if_not_exists=True).compile(dialect=dialect))]
        statements += [
            str(CreateIndex(index, if_not_exists=True).compile(dialect=dialect))
            for index in self.table.indexes
        ]
        if self.backend == "postgresql":
            statements += self.notify_trigger()
        return [statement.strip() for statement in statements]

    def notify_trigger(self) -> list[str]:
        table = self.table.name
        return [
            f"""CREATE OR REPLACE FUNCTION {table}_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('{NOTIFY_CHANNEL}', NEW.channel);
    RETURN NULL;
END $$ LANGUAGE plpgsql""",
            f"""CREATE OR REPLACE TRIGGER {table}_notify AFTER INSERT ON {table}
    FOR EACH ROW EXECUTE FUNCTION {table}_notify()""",
        ]

    def insert(self, connection: Connection | AsyncConnection, row: dict[str, Any]) -> Any:
        """The INSERT of ``row`` as the driver's SQL and parameters, compiled once per dialect:
        sending is the outbox's hot path, and compiling each time costs more than the insert."""
        dialect = connection.dialect
        compiled = self._inserts.get(dialect)
        if compiled is None:
            statement = insert(self.table).inline().compile(dialect=dialect, column_keys=list(row))
            positions = tuple(statement.positiontup or ())
            compiled = self._inserts[dialect] = (statement.string, positions)
        sql, positions = compiled
        return sql, tuple(row[key] for key in positions) if positions else row

    def claim(
        self, limit: int, now: float, windowed: bool = False, bound: Any = None
    ) -> tuple[Any, dict[str, int]]:
        """The claim of up to ``limit`` messages due ``now``, and its parameters; ``windowed``:
        among the ``WINDOW`` messages due first only (``SqlConsumer.found_nothing``), on
        MariaDB those up to ``bound``, the row ``window_bound`` found."""
        parameters = {"now": int(now * 1000), "limit": limit}
        if not windowed:
            return self._claim, parameters
        if bound is not None:
            parameters.update(bound_at=bound.available_at, bound_seq=bound.seq)
        return self._claim_windowed, parameters

    def window_bound(self, now: float) -> tuple[Any, dict[str, int]]:
        """The query of the ``WINDOW``-th message due ``now`` (``available_at`` and ``seq``),
        if there are that many: a windowed claim on MariaDB looks at those up to it."""
        return self._window_bound, {"now": int(now * 1000)}

    def lease(self, seqs: list[int], until: float) -> tuple[Any, Any]:
        table = self.table
        statement = update(table).values(
            available_at=int(until * 1000), deliveries=table.c.deliveries + 1
        )
        return self._by_key(statement, seqs)

    def release(self, seqs: list[int], now: float) -> tuple[Any, Any]:
        """Give leased rows back untouched, available ``now``: their lease is not counted."""
        table = self.table
        statement = update(table).values(
            available_at=int(now * 1000), deliveries=table.c.deliveries - 1
        )
        return self._by_key(statement, seqs)

    def ack(self, seqs: list[int]) -> tuple[Any, Any]:
        if self.backend == "mysql":
            return self._by_key(delete(self.table), seqs)
        return self._ack, {"seqs": seqs}

    def keep_back(self, rows: Sequence[Row[Any]], now: float) -> tuple[Any, Any]:
        """Make ``rows`` available again later, each after a pause doubled at every try."""
        statement = (
            update(self.table)
            .where(self.table.c.seq == bindparam("key"))
            .values(available_at=bindparam("until"), deliveries=self.table.c.deliveries + 1)
        )
        return statement, [
            {"key": row.seq, "until": int((now + _kept_back_pause(row.deliveries)) * 1000)}
            for row in rows
        ]

    def next_due(self) -> Any:
        """When the channel's earliest message is due (``available_at``), or NULL."""
        return self._next_due

    def waiting(self, key: str | None) -> Any:
        """How many messages of the ordering key ``key`` wait on the channel."""
        table = self.table
        return select(func.count()).where(table.c.channel == self.name, table.c.ordering_key == key)

    def depth(self) -> Any:
        return select(func.count()).where(self.table.c.channel == self.name)

    def first_queued(self, now: float) -> Any:
        """When the oldest message due ``now`` was first due (``queued_at``), or NULL."""
        table = self.table
        return select(func.min(table.c.queued_at)).where(
            table.c.channel == self.name, table.c.queued_at <= int(now * 1000)
        )

    def _by_key(self, statement: Any, seqs: list[int]) -> tuple[Any, Any]:
        """``statement`` for the rows ``seqs``, and its parameters: ``execute(*...)``."""
        if self.backend == "mysql":
            # MariaDB/MySQL may read ``seq IN (...)`` by a scan that locks rows other workers
            # have claimed, and workers deadlock: there, go by the key, one row at a time.
            keyed = statement.where(self.table.c.seq == bindparam("key"))
            return keyed, [{"key": seq} for seq in seqs]
        return statement.where(self.table.c.seq.in_(seqs)), None


def claimable(table: Table, letters: Table | None, backend: str = "") -> ColumnElement[bool]:
    """Whether a row may be claimed as far as its key goes: it has none, or it is first of
    its key (no row of the key before its place, kept back, delayed or in another worker's
    hands) and no dead letter of its key on its channel waits to be replayed or skipped.

    A row's place is its ``position`` when it repeats an earlier message, else its ``seq``;
    a position is never above its row's ``seq``, so a row with an earlier place has either
    a lower ``seq`` or a lower ``position``: two probes, each on an index of keyed rows. On
    PostgreSQL each probe looks for a row before the place (``NOT EXISTS``); MariaDB would
    read every row of the key after it to find none, so there it reads one index entry: the
    key's first ``seq`` (``ORDER BY ... LIMIT 1``; a ``MIN`` in a subquery reads the whole
    key), and its last ``position``, to look for an earlier one only when the key has any
    (NULLs come first in that index)."""
    place = func.coalesce(table.c.position, table.c.seq)
    by_seq, by_position = table.alias("earlier"), table.alias("placed_earlier")

    def same_key(other: Any) -> ColumnElement[bool]:
        return and_(
            other.c.channel == table.c.channel, other.c.ordering_key == table.c.ordering_key
        )

    if backend == "mysql":
        earliest = (
            select(by_seq.c.seq)
            .where(same_key(by_seq))
            .order_by(by_seq.c.seq)
            .limit(1)
            .scalar_subquery()
        )
        latest_position = (
            select(by_position.c.position)
            .where(same_key(by_position))
            .order_by(by_position.c.position.desc())
            .limit(1)
            .scalar_subquery()
        )
        placed_earlier = exists().where(same_key(by_position), by_position.c.position < place)
        first_of_key = (earliest >= place) & (latest_position.is_(None) | ~placed_earlier)
    else:
        earlier = exists().where(same_key(by_seq), by_seq.c.seq < place)
        placed_earlier = exists().where(same_key(by_position), by_position.c.position < place)
        first_of_key = ~earlier & ~placed_earlier
    if letters is not None:
        first_of_key = first_of_key & ~exists().where(
            letters.c.channel == table.c.channel, letters.c.ordering_key == table.c.ordering_key
        )
    return or_(table.c.ordering_key.is_(None), first_of_key)


WINDOW = 1000
"""How many of the channel's messages due first a windowed claim looks at."""


def window(table: Table, name: str) -> ColumnElement[bool]:
    """Whether a row is among the ``WINDOW`` messages of channel ``name`` due first: at or
    before the ``WINDOW``-th in ``(available_at, seq)`` order, found by two probes of the
    dequeue index, a range of that index that the claim's scan stops at."""

    def last(column: Any) -> Any:
        found = (
            select(column)
            .where(table.c.channel == name, table.c.available_at <= bindparam("now"))
            .order_by(table.c.available_at, table.c.seq)
            .offset(WINDOW - 1)
            .limit(1)
            .scalar_subquery()
        )
        return func.coalesce(found, _LAST)

    return tuple_(table.c.available_at, table.c.seq) <= tuple_(
        last(table.c.available_at), last(table.c.seq)
    )


def _kept_back_pause(deliveries: int) -> float:
    return min(_KEPT_BACK_PAUSE * float(2 ** min(deliveries, 16)), _LONGEST_KEPT_BACK_PAUSE)
