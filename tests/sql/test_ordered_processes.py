"""Ordering keys across worker processes: 200 keys, three processes of four threads each.

The steps of one key are handled one at a time, in the order sent, once each, however many
workers share the channel; a worker killed with SIGKILL in the middle of a batch loses its
batch's writes, and the batch is handled again, in order, by the others.
The backlog is 20,000 steps on every database; ``BUSWAY_TEST_ORDERED_MESSAGES`` sets another
size, e.g. 4000.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import ordered_worker
import pytest
from ordered_worker import OrderedBus, Step
from sqlalchemy import create_engine, func, select

from dbsupport import create_tables, sync_url
from markers import write_atomically
from workers import finish, kill_when, start_worker

HERE = Path(__file__).parent
KEYS = 200
STEPS = {"sqlite": 20_000, "postgresql": 20_000, "mysql": 20_000}
"""The steps of the backlog on each database, unless ``BUSWAY_TEST_ORDERED_MESSAGES``."""
PER_KEY = STEPS["sqlite"] // KEYS
TOTAL = KEYS * PER_KEY
WORKERS, CONCURRENCY = 3, 4
SENDS_PER_TRANSACTION = 5_000
PATIENCE = 600
"""Seconds the workers may take to drain the channel: well under a minute, unless the machine
is loaded."""
BLOCK_AT = max(1, min(1_000, TOTAL // 10))
"""The call at which the killed worker stays in its handler, well into the run."""


@pytest.fixture(autouse=True)
def backlog_size(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``PER_KEY``, ``TOTAL`` and ``BLOCK_AT`` for the test's database."""
    steps = os.environ.get("BUSWAY_TEST_ORDERED_MESSAGES")
    total = int(steps) if steps else STEPS[sync_url(database_url).get_backend_name()]
    per_key = total // KEYS
    module = globals()
    monkeypatch.setitem(module, "PER_KEY", per_key)
    monkeypatch.setitem(module, "TOTAL", KEYS * per_key)
    monkeypatch.setitem(module, "BLOCK_AT", max(1, min(1_000, KEYS * per_key // 10)))


def send_backlog(url: str) -> None:
    """``PER_KEY`` steps for each key, sent round-robin over the keys: every batch a worker
    claims holds many keys, and the steps of one key are spread over many batches."""
    create_tables(url, ordered_worker.metadata)
    messaging = ordered_worker.build(url)
    messaging.setup()
    try:
        bus = messaging.gateway(OrderedBus)
        for start in range(0, TOTAL, SENDS_PER_TRANSACTION):
            with messaging.transaction():
                for index in range(start, min(TOTAL, start + SENDS_PER_TRANSACTION)):
                    key, seq = index % KEYS, index // KEYS
                    bus.send(Step(key, seq), ordering_key=f"k{key}")
        assert messaging.channel(ordered_worker.CHANNEL).depth() == TOTAL
    finally:
        messaging.close()
    analyze(url)


def analyze(url: str) -> None:
    """Refresh the planner's statistics of the backlog just written, as autovacuum would (it
    is off on some test servers): never analyzed, the table looks empty to PostgreSQL, whose
    plan then probes the key of every waiting row at each claim."""
    engine = create_engine(sync_url(url))
    try:
        with engine.begin() as connection:
            backend = engine.dialect.name
            if backend == "postgresql":
                connection.exec_driver_sql("ANALYZE busway_messages")
            elif backend in ("mysql", "mariadb"):
                connection.exec_driver_sql("ANALYZE TABLE busway_messages")
    finally:
        engine.dispose()


def start(url: str, name: str, folder: Path, *options: str) -> subprocess.Popen[str]:
    return start_worker(
        HERE,
        "ordered_worker",
        url,
        name,
        "--concurrency",
        str(CONCURRENCY),
        "--ready",
        str(folder / f"ready-{name}"),
        "--go",
        str(folder / "go"),
        *options,
    )


def wait_until(
    condition: Callable[[], bool],
    what: str,
    processes: Iterable[subprocess.Popen[str]],
    timeout: float = 120,
) -> None:
    """Poll the workers' progress; fail if one dies or the deadline passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        for process in processes:
            if process.poll() is not None:
                _, errors = process.communicate()
                pytest.fail(f"a worker exited ({process.returncode}) before {what}:\n{errors}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def release(folder: Path, names: Sequence[str], workers: list[subprocess.Popen[str]]) -> None:
    """Start the workers' consuming at one moment, once every one of them is ready."""
    ready = [folder / f"ready-{name}" for name in names]
    wait_until(lambda: all(path.exists() for path in ready), "every worker is ready", workers)
    write_atomically(folder / "go", "go")


def results(url: str, workers: list[subprocess.Popen[str]]) -> list[dict[str, int]]:
    """What each worker printed once it drained the channel. Fails at the first dead letter:
    it holds its key back, so the channel would never be drained."""
    messaging = ordered_worker.build(url)
    deadline = time.monotonic() + PATIENCE
    try:
        while any(worker.poll() is None for worker in workers):
            letters = messaging.dead_letters.list()
            if letters:
                stop(workers)
                first = letters[0]
                pytest.fail(
                    f"{len(letters)} step(s) dead-lettered while the workers drained, the "
                    f"first {first.body.decode()}: {first.error_type}: {first.error_message}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"the workers did not drain the channel in {PATIENCE} s")
            time.sleep(0.2)
    finally:
        messaging.close()
    return [json.loads(finish(worker).strip().splitlines()[-1]) for worker in workers]


def stop(workers: list[subprocess.Popen[str]]) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.kill()
            worker.communicate(timeout=30)


def handled_rows(url: str) -> list[tuple[int, int, str]]:
    """Every (key, seq, worker) row, in the order the steps were handled."""
    table = ordered_worker.handled
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                select(table.c.key, table.c.seq, table.c.worker).order_by(table.c.position)
            ).all()
    finally:
        engine.dispose()
    return [(key, seq, worker) for key, seq, worker in rows]


def count_rows(url: str) -> int:
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            return connection.execute(
                select(func.count()).select_from(ordered_worker.handled)
            ).scalar_one()
    finally:
        engine.dispose()


def order_violations(rows: list[tuple[int, int, str]]) -> list[str]:
    """What is wrong with each key's steps in handling order: a step before an earlier one,
    a step twice, a step missing; nothing when every key went 0, 1, 2, ... once each."""
    by_key: dict[int, list[int]] = {key: [] for key in range(KEYS)}
    for key, seq, _ in rows:
        by_key.setdefault(key, []).append(seq)
    return [
        f"key {key}: {'; '.join(_problems(seqs))}"
        for key, seqs in by_key.items()
        if seqs != list(range(PER_KEY))
    ]


def _problems(seqs: list[int]) -> list[str]:
    problems = []
    overtaken = [at for at in range(1, len(seqs)) if seqs[at] < seqs[at - 1]]
    if overtaken:
        at = overtaken[0]
        around = ", ".join(map(str, seqs[max(0, at - 3) : at + 3]))
        problems.append(
            f"{len(overtaken)} step(s) handled after a later one, the first {seqs[at]} after "
            f"{seqs[at - 1]} (handling order ..., {around}, ...)"
        )
    twice = sorted(seq for seq, times in Counter(seqs).items() if times > 1)
    if twice:
        problems.append(f"handled more than once: {twice[:5]}")
    missing = sorted(set(range(PER_KEY)) - set(seqs))
    if missing:
        problems.append(f"never handled: {missing[:5]}")
    return problems


def dead_letters(url: str) -> list[str]:
    messaging = ordered_worker.build(url)
    try:
        return [
            f"{letter.body.decode()}: {letter.error_type}: {letter.error_message}"
            for letter in messaging.dead_letters.list()
        ]
    finally:
        messaging.close()


def assert_in_order(url: str) -> list[tuple[int, int, str]]:
    rows = handled_rows(url)
    wrong = order_violations(rows)
    lost = dead_letters(url)
    assert not wrong, (
        f"{len(wrong)} of {KEYS} ordering keys were not handled in order, once each step:\n"
        + "\n".join(wrong[:10])
        + (f"\nand {len(lost)} step(s) were dead-lettered, the first {lost[0]}" if lost else "")
    )
    assert len(rows) == TOTAL
    assert lost == []
    return rows


def assert_drained(url: str, outcomes: list[dict[str, int]]) -> None:
    messaging = ordered_worker.build(url)
    try:
        assert messaging.channel(ordered_worker.CHANNEL).depth() == 0
    finally:
        messaging.close()
    assert all(outcome["failed"] == 0 for outcome in outcomes), outcomes


def drain_in_order(url: str, folder: Path, names: list[str]) -> list[tuple[int, int, str]]:
    """Send the backlog, drain it with a worker process for each of ``names``, and check that
    every key went in order, once each step, every worker's run clean; the rows handled."""
    send_backlog(url)
    workers = [start(url, name, folder) for name in names]
    try:
        release(folder, names, workers)
        outcomes = results(url, workers)
    finally:
        stop(workers)

    rows = assert_in_order(url)
    assert_drained(url, outcomes)
    assert sum(outcome["handled"] for outcome in outcomes) == TOTAL
    return rows


@pytest.mark.timeout(PATIENCE + 300)
def test_each_key_in_order_across_three_worker_processes(database_url, tmp_path):
    names = [f"w{index}" for index in range(WORKERS)]
    rows = drain_in_order(database_url, tmp_path, names)
    assert {worker for _, _, worker in rows} == set(names)  # the work was shared


@pytest.mark.timeout(PATIENCE + 300)
def test_each_key_in_order_when_a_worker_is_killed_mid_batch(database_url, tmp_path):
    send_backlog(database_url)
    names = [f"w{index}" for index in range(WORKERS)]
    marker = tmp_path / "in-handler"
    workers = [
        start(
            database_url, names[0], tmp_path, "--block-at", str(BLOCK_AT), "--marker", str(marker)
        )
    ]
    workers += [start(database_url, name, tmp_path) for name in names[1:]]
    try:
        release(tmp_path, names, workers)
        key, seq = json.loads(kill_when(marker, workers[0], timeout=120))
        committed = count_rows(database_url)
        assert 0 < committed < TOTAL  # killed mid-run, after its first batches committed
        workers[0] = start(database_url, "replacement", tmp_path)
        outcomes = results(database_url, workers)
    finally:
        stop(workers)

    rows = assert_in_order(database_url)
    assert_drained(database_url, outcomes)
    # The killed worker's batch in hand was rolled back: its step was handled again, by another.
    (handler,) = [worker for k, s, worker in rows if (k, s) == (key, seq)]
    assert handler != names[0]


@pytest.mark.timeout(PATIENCE + 300)
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_six_processes_on_one_sqlite_file_count_no_worker_deaths(
    database_url, tmp_path, monkeypatch
):
    """Each SQLite batch is claimed and noted in hand before its own transaction begins: a
    consumer of another process claiming in between noted the rows again, and the crash-loop
    guard dead-lettered steps no worker died with. Consumers of one file take turns."""
    monkeypatch.setitem(globals(), "PER_KEY", 30)
    monkeypatch.setitem(globals(), "TOTAL", KEYS * 30)
    drain_in_order(database_url, tmp_path, [f"w{index}" for index in range(6)])
