"""Runs of a key in one batch: a claim that takes the first message of a key may take the
messages that follow it in the key's order too, and hand them out after it, in the same
transaction.

A batch holds one message of each key otherwise, and when the keys are few for the consumers
(200 keys, batches of 100: two batches hold them all), the others find nothing to take. While
a process's consumers are held back so (``SqlConsumer.takes_runs``), a claim takes a quarter of
its batch in first messages of keys, then up to ``RUN - 1`` followers of each: four batches
share those 200 keys, each as large as before.

No other worker can claim the followers while the first message of their key is in the
table, and the batch deletes it with them: they need no lock. On PostgreSQL only: on MariaDB,
at its default isolation level, another worker's claim keeps a lock on every row it read past
to its transaction's end, and a batch deleting followers would wait for those (and be chosen
as a deadlock's victim), slower than a batch of first messages only.

A follower is handed out only while its key's earlier messages in the batch went through:
once one was sent again to keep its place (a delayed retry), dead-lettered, or forwarded to
another channel (whose send may yet fail), the key's later messages in the batch stay in the
table, for a later batch (``busway.sql._async.consuming``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    Table,
    any_,
    bindparam,
    func,
    select,
    true,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY

RUN = 4
"""The most messages of one key a batch takes, while consumers are held back."""


class Followers:
    """The query of the messages that follow the first ones of some keys on a channel."""

    def __init__(self, table: Table, name: str, columns: Sequence[ColumnElement[Any]]) -> None:
        self.table = table
        self.name = name
        self.columns = [*columns, table.c.available_at]
        self._lateral: Select[Any] | None = None
        self._keys_type = ARRAY(table.c.ordering_key.type)

    def query(self, keys: Sequence[str]) -> tuple[Select[Any], dict[str, Any]]:
        """The first ``RUN`` messages of each key by ``seq``, and every message of the keys
        that keeps an earlier place (``position``): among them, each key's first by place."""
        if self._lateral is None:
            self._lateral = self._make()
        return self._lateral, {"run": RUN, "keys": list(keys)}

    def _first_of(self, key: Any) -> Select[Any]:
        table = self.table
        return (
            select(*self.columns)
            .where(table.c.channel == self.name, table.c.ordering_key == key)
            .order_by(table.c.seq)
            .limit(bindparam("run"))
        )

    def _placed(self, keys: Any) -> Select[Any]:
        table = self.table
        return select(*self.columns).where(table.c.channel == self.name, keys, table.c.position > 0)

    def _make(self) -> Select[Any]:
        keys = (
            func.unnest(bindparam("keys", type_=self._keys_type))
            .table_valued("key")
            .render_derived(name="keys")
        )
        first = self._first_of(keys.c.key).lateral("first_of_key")
        by_key = select(*first.c).select_from(keys.join(first, true()))
        among = self.table.c.ordering_key == any_(bindparam("keys", type_=self._keys_type))
        return union_all(by_key, self._placed(among))  # type: ignore[return-value]


def with_runs(heads: Sequence[Any], followers: Sequence[Any], limit: int, now: int) -> list[Any]:
    """``heads`` (the claim's rows, each first of its key), then their keys' followers, up to
    ``limit`` rows in all: the second message of each key, then the third, and so on, each
    key's run ending at its first message not due by ``now`` (milliseconds).

    A key whose rows include one placed before its head (a message sent again meanwhile)
    takes no followers."""
    taken = {head.seq for head in heads}
    rows_of: dict[str, dict[int, Any]] = defaultdict(dict)
    for row in followers:
        if row.seq not in taken:
            rows_of[row.ordering_key][row.seq] = row
    runs: list[list[Any]] = []
    for head in heads:
        if head.ordering_key is None:
            continue
        after = sorted(rows_of.get(head.ordering_key, {}).values(), key=lambda row: row.position)
        if after and after[0].position < head.position:
            continue
        run = []
        for row in after[: RUN - 1]:
            if row.available_at > now:
                break
            run.append(row)
        runs.append(run)
    batch = list(heads)
    for depth in range(RUN - 1):
        for run in runs:
            if len(batch) >= limit:
                return batch
            if depth < len(run):
                batch.append(run[depth])
    return batch
