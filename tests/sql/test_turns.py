"""The turns of an SQLite file's consumers: a turn excludes every other turn of the file,
whichever ``Turns`` (so process) holds it, and a waiter cancelled does not keep the lock."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import pytest
from sqlalchemy.engine import make_url

from busway.sql.turns import LOCK_SUFFIX, Turns, lock_file

pytestmark = pytest.mark.skipif(lock_file(make_url("sqlite:///x")) is None, reason="no fcntl")


def test_the_lock_file_lies_beside_a_database_file_and_memory_has_none(tmp_path):
    database = tmp_path / "app.db"
    assert lock_file(make_url(f"sqlite:///{database}")) == str(database) + LOCK_SUFFIX
    assert lock_file(make_url("sqlite://")) is None
    assert lock_file(make_url("sqlite:///:memory:")) is None
    assert lock_file(make_url("sqlite:///file:shared?mode=memory&cache=shared&uri=true")) is None
    assert lock_file(make_url("postgresql://localhost/test")) is None


def test_a_turn_keeps_the_turns_of_another_holder_of_the_file_waiting(tmp_path):
    path = str(tmp_path / "app.db") + LOCK_SUFFIX
    ours, theirs = Turns(path), Turns(path)
    entered = threading.Event()

    def take_theirs() -> None:
        with theirs.turn():
            entered.set()

    with ours.turn():
        other = threading.Thread(target=take_theirs)
        other.start()
        assert not entered.wait(0.3)  # held: the other holder waits
    assert entered.wait(10)
    other.join()


async def test_an_asyncio_turn_waits_off_the_loop_and_a_cancelled_wait_lets_the_lock_go(
    tmp_path,
):
    path = str(tmp_path / "app.db") + LOCK_SUFFIX
    sync, first, second = Turns(path), Turns(path), Turns(path)
    ticks = 0

    async def wait_for_turn(turns: Turns) -> None:
        async with turns.aturn():
            pass

    with sync.turn():
        waiting = asyncio.create_task(wait_for_turn(first))
        for _ in range(20):  # the loop runs while the task waits for the lock
            await asyncio.sleep(0.01)
            ticks += 1
        assert not waiting.done()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    assert ticks == 20
    # The cancelled wait got the lock once the sync turn ended, and let it go at once.
    await asyncio.wait_for(wait_for_turn(second), 10)


def test_a_lock_file_that_cannot_be_made_leaves_the_turns_of_the_process(tmp_path, caplog):
    turns = Turns(str(tmp_path / "missing-folder" / "app.db") + LOCK_SUFFIX)
    with turns.turn():
        pass
    assert turns.path is None
    assert "cannot lock" in caplog.text


async def test_asyncio_turns_waiting_for_the_lock_leave_the_executor_to_the_holder(tmp_path):
    """No thread waits for the lock: with every executor thread free, the holder's own
    ``asyncio.to_thread`` runs while the other turns wait."""
    loop = asyncio.get_running_loop()
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    loop.set_default_executor(executor)
    path = str(tmp_path / "app.db") + LOCK_SUFFIX
    holder, *others = [Turns(path) for _ in range(3)]

    async def wait_for_turn(turns: Turns) -> None:
        async with turns.aturn():
            pass

    async with holder.aturn():
        waiting = [asyncio.create_task(wait_for_turn(turns)) for turns in others]
        await asyncio.sleep(0.05)
        assert await asyncio.wait_for(asyncio.to_thread(lambda: "ran"), 5) == "ran"
        assert not any(task.done() for task in waiting)
    await asyncio.wait_for(asyncio.gather(*waiting), 10)
