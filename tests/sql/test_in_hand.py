"""The crash-loop guard's count, in one process: what counts as a death, and what does not.

The deaths themselves, in real processes, are in ``test_crash_loops.py``. Here a death is
what one leaves behind (a note of a message in hand, a lease not given back), written by
hand; the tests check that a worker that lives leaves nothing of the kind.
"""

from dataclasses import dataclass

import pytest
from sqlalchemy import MetaData, create_engine, insert, inspect, select, update

from busway import CommandBus, SqlChannel, asynchronous, command_handler
from busway.channels.base import current_batch
from busway.sql.schema import messages_table
from dbsupport import sync_url


@dataclass
class Task:
    id: int


@asynchronous("tasks")
class TaskBus(CommandBus):
    pass


class Tasks:
    """Notes each task with the size of the batch it was handed out in."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int]] = []

    @command_handler
    def run(self, task: Task) -> None:
        batch = current_batch.get()
        self.batches.append((task.id, len(batch.message_ids) if batch else 1))


class AsyncTasks(Tasks):
    @command_handler
    async def run(self, task: Task) -> None:  # type: ignore[override]
        batch = current_batch.get()
        self.batches.append((task.id, len(batch.message_ids) if batch else 1))


def send(messaging, count):
    bus = messaging.gateway(TaskBus)
    with messaging.transaction():
        for index in range(count):
            bus.send(Task(index))


def rows(url, table):
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            found = MetaData()
            found.reflect(connection, only=[table])
            return [tuple(row) for row in connection.execute(select(found.tables[table]))]
    finally:
        engine.dispose()


def note_deaths(url, channel, deaths):
    """What workers that died with these messages in hand leave: ``{index: deaths}``."""
    engine = create_engine(sync_url(url))
    messages = channel.table
    try:
        with engine.begin() as connection:
            seqs = connection.execute(select(messages.c.seq).order_by(messages.c.seq)).scalars()
            seqs = list(seqs)
            if channel.mode == "lease":
                for index, count in deaths.items():
                    connection.execute(
                        update(messages)
                        .where(messages.c.seq == seqs[index])
                        .values(deliveries=count)
                    )
                return
            connection.execute(
                insert(channel.in_hand_table),
                [
                    {"seq": seqs[index], "channel": channel.name, "taken": count}
                    for index, count in deaths.items()
                ],
            )
    finally:
        engine.dispose()


@pytest.mark.parametrize("mode", ["transaction", "lease"])
@pytest.mark.parametrize("front_door", ["run", "arun"])
async def test_a_message_in_hand_at_a_death_is_handed_out_alone(
    make_messaging, database_url, mode, front_door
):
    tasks = AsyncTasks() if front_door == "arun" else Tasks()
    channel = SqlChannel("tasks", mode=mode)
    messaging = make_messaging([tasks], [channel])
    send(messaging, 6)
    note_deaths(database_url, channel, {0: 1, 3: 1})

    if front_door == "arun":
        result = await messaging.arun("tasks")
    else:
        result = messaging.run("tasks")

    assert result.handled == 6
    # 0 alone, then 1 and 2 (stopping before 3), 3 alone, then 4 and 5
    assert [task for task, _ in tasks.batches] == [0, 1, 2, 3, 4, 5]
    if mode == "transaction":  # a lease batch is handed out without a Batch
        assert [size for _, size in tasks.batches] == [1, 2, 2, 1, 2, 2]
    assert messaging.dead_letters.list() == []
    assert rows(database_url, channel.in_hand_table.name) == []


@pytest.mark.parametrize("mode", ["transaction", "lease"])
async def test_a_message_at_max_crashes_is_dead_lettered_unhandled(
    make_messaging, database_url, mode
):
    tasks, channel = Tasks(), SqlChannel("tasks", mode=mode)
    messaging = make_messaging([tasks], [channel], max_crashes=2)
    send(messaging, 3)
    note_deaths(database_url, channel, {1: 2})

    assert messaging.run("tasks").handled == 3

    assert [task for task, _ in tasks.batches] == [0, 2]
    [letter] = messaging.dead_letters.list()
    assert letter.body == b'{"id":1}'
    assert letter.error_message.startswith("the worker died 2 times handling it")
    assert channel.depth() == 0


@pytest.mark.parametrize("front_door", ["run", "arun"])
async def test_a_lease_given_back_on_a_graceful_stop_counts_no_death(
    make_messaging, database_url, front_door
):
    tasks = AsyncTasks() if front_door == "arun" else Tasks()
    channel = SqlChannel("tasks", mode="lease")
    messaging = make_messaging([tasks], [channel])
    send(messaging, 5)

    # The run stops after one message: the rest of the leased batch is given back.
    if front_door == "arun":
        assert (await messaging.arun("tasks", limit=1)).handled == 1
    else:
        assert messaging.run("tasks", limit=1).handled == 1

    left = rows(database_url, channel.table.name)
    assert len(left) == 4
    deliveries = channel.table.c.keys().index("deliveries")
    assert [row[deliveries] for row in left] == [0, 0, 0, 0]


class Failing:
    def __init__(self) -> None:
        self.calls = 0

    @command_handler
    def run(self, task: Task) -> None:
        self.calls += 1
        if task.id == 1 and self.calls == 2:
            raise RuntimeError("refused")


@pytest.mark.parametrize("front_door", ["run", "arun"])
async def test_a_batch_its_worker_lives_through_leaves_no_note(
    make_messaging, database_url, front_door
):
    # A batch redone after a failure, one stopped half way, one handled to the end.
    channel = SqlChannel("tasks", redo_batches=True)
    handler = Failing()
    messaging = make_messaging([handler], [channel])
    send(messaging, 5)

    if front_door == "arun":
        assert (await messaging.arun("tasks", limit=3)).handled == 3
        assert rows(database_url, channel.in_hand_table.name) == []
        assert (await messaging.arun("tasks")).handled == 2
    else:
        assert messaging.run("tasks", limit=3).handled == 3
        assert rows(database_url, channel.in_hand_table.name) == []
        assert messaging.run("tasks").handled == 2

    assert rows(database_url, channel.in_hand_table.name) == []
    assert channel.depth() == 1  # the failed task's delayed retry, a message of its own


class Stopping:
    """Stops its worker after the second task: the rest of the batch is given back."""

    def __init__(self) -> None:
        self.worker = None
        self.done: list[int] = []

    @command_handler
    def run(self, task: Task) -> None:
        self.done.append(task.id)
        if len(self.done) == 2:
            self.worker.stop()


@pytest.mark.parametrize("front_door", ["run", "arun"])
async def test_a_batch_given_back_half_way_leaves_no_note(make_messaging, database_url, front_door):
    channel, handler = SqlChannel("tasks"), Stopping()
    messaging = make_messaging([handler], [channel])
    send(messaging, 5)
    handler.worker = messaging.worker("tasks")

    if front_door == "arun":
        result = await handler.worker.arun()
    else:
        result = handler.worker.run()

    assert (result.handled, result.reason) == (2, "stopped")
    assert channel.depth() == 3
    assert rows(database_url, channel.in_hand_table.name) == []


def test_setup_adds_the_in_hand_table_to_a_channel_table_of_an_earlier_version(
    make_messaging, database_url
):
    engine = create_engine(sync_url(database_url))
    try:
        messages_table(MetaData()).create(engine)
        messaging = make_messaging([Tasks()], [SqlChannel("tasks")])
        assert "busway_messages_in_hand" in inspect(engine).get_table_names()
    finally:
        engine.dispose()
    ddl = messaging.setup_sql()
    assert any("CREATE TABLE IF NOT EXISTS busway_messages_in_hand" in s for s in ddl)


@pytest.mark.parametrize("front_door", ["run", "arun"])
async def test_consumers_of_one_process_never_count_each_others_notes_as_deaths(
    make_messaging, database_url, front_door
):
    """On SQLite a batch is claimed and noted in a transaction of its own before it is
    handled: four consumers claiming at once used to note the same rows three times, and the
    guard dead-lettered them as if three workers had died with them."""
    tasks = AsyncTasks() if front_door == "arun" else Tasks()
    channel = SqlChannel("tasks", batch_size=10)
    messaging = make_messaging([tasks], [channel])
    send(messaging, 1000)

    if front_door == "arun":
        result = await messaging.arun("tasks", concurrency=4)
    else:
        result = messaging.run("tasks", concurrency=4)

    assert (result.handled, result.dead_lettered) == (1000, 0)
    assert sorted(task for task, _ in tasks.batches) == list(range(1000))
    assert messaging.dead_letters.list() == []
    assert rows(database_url, channel.in_hand_table.name) == []
