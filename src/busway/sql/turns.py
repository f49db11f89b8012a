"""One batch at a time for the consumers of an SQLite database file, across threads, event
loops and processes, where a batch is claimed and noted in hand in a transaction of its own
before it is handled (``SqlConsumer.claims_first``).

Between that claim and the batch's own transaction the rows are not locked: another consumer
claiming then would note them in hand again, and the notes of live consumers would count as
deaths of workers (the crash-loop guard would dead-letter a message no worker died with). The
batch's transaction holds SQLite's one write lock anyway, so taking turns costs no parallelism.

In a process, sync consumers take turns on a thread lock, asyncio ones on a lock of their
event loop; across processes, and between the two, each turn is an exclusive ``flock`` of a
file beside the database (``<database>.busway-lock``), which the system lets go of when its
process dies, however it dies: a sync consumer waits for it in its thread, an asyncio one
tries for it without waiting, again and again. Where ``fcntl`` is missing (Windows) or the
database is in memory (one process), the locks of the process are all there is.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from sqlalchemy.engine import URL

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("busway.sql")

LOCK_SUFFIX = ".busway-lock"

_FIRST_POLL = 0.0005
_LONGEST_POLL = 0.01
"""Seconds between an asyncio consumer's tries for the lock another holds (the first, the
longest): as SQLite's own write lock is tried (``busway.sql.database``)."""


def lock_file(url: URL) -> str | None:
    """The file whose lock is the turn of ``url``'s consumers, or None: not an SQLite file."""
    if url.get_backend_name() != "sqlite" or fcntl is None:
        return None
    database = url.database or ""
    if database.startswith("file:"):
        database, _, options = database[len("file:") :].partition("?")
        if "mode=memory" in options:
            return None
    if database in ("", ":memory:") or url.query.get("mode") == "memory":
        return None
    return os.path.realpath(database) + LOCK_SUFFIX


class Turns:
    """The turns of one channel's consumers in this process, and of every consumer of the
    database file ``path`` (None: of this process only)."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._loop_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock]
        self._loop_locks = weakref.WeakKeyDictionary()

    @contextmanager
    def turn(self) -> Iterator[None]:
        """This thread's turn."""
        with self._lock:
            descriptor = self._opened() if self.path else None
            try:
                yield
            finally:
                if descriptor is not None:
                    os.close(descriptor)

    @asynccontextmanager
    async def aturn(self) -> AsyncIterator[None]:
        """This task's turn: the file lock is tried for, never waited for on the loop."""
        async with self._loop_lock():
            descriptor = None
            if self.path:
                try:
                    descriptor = await _alocked(self.path)
                except OSError as error:
                    self._cannot_open(error)
            try:
                yield
            finally:
                if descriptor is not None:
                    os.close(descriptor)

    def _opened(self) -> int | None:
        assert self.path is not None
        try:
            return _locked(self.path, wait=True)
        except OSError as error:
            self._cannot_open(error)
            return None

    def _cannot_open(self, error: OSError) -> None:
        """The lock file cannot be made (a folder the worker may not write in): the
        consumers of this process take turns, those of other processes may not."""
        log.warning(
            "cannot lock %s (%s): SQLite consumers of other processes may count this "
            "process's batches in hand as deaths of workers; let the worker write beside "
            "the database file",
            self.path,
            error,
        )
        self.path = None

    def _loop_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        lock = self._loop_locks.get(loop)
        if lock is None:
            lock = self._loop_locks[loop] = asyncio.Lock()
        return lock


def _locked(path: str, wait: bool) -> int | None:
    """A descriptor of ``path`` holding its exclusive lock; None if ``wait`` is false and
    another holds it. Each turn opens the file anew: two descriptors of one process exclude
    each other as two processes do, and closing one lets its lock go."""
    assert fcntl is not None
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


async def _alocked(path: str) -> int:
    """``_locked`` on an event loop: tried again and again, each time without waiting, the
    pauses between growing to ``_LONGEST_POLL``. No thread waits for the lock: a task
    cancelled meanwhile holds nothing, and the loop's executor stays free for the handlers
    (a thread blocked in ``flock`` for each waiting channel could fill it, and the holder's
    own ``asyncio.to_thread`` would wait behind them for ever)."""
    pause = _FIRST_POLL
    while True:
        descriptor = _locked(path, wait=False)
        if descriptor is not None:
            return descriptor
        await asyncio.sleep(pause)
        pause = min(pause * 1.5, _LONGEST_POLL)
