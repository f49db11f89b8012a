"""Running a coroutine from synchronous code, whether or not an event loop runs here."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_loop: asyncio.AbstractEventLoop | None = None
_lock = threading.Lock()


def _helper_loop() -> asyncio.AbstractEventLoop:
    """One event loop on a daemon thread, kept for the life of the process.

    Always the same loop, so that asyncio resources made by one call (an AsyncEngine's pooled
    connections, say) still work in the next.
    """
    global _loop
    with _lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="busway-bridge", daemon=True).start()
            _loop = loop
        return _loop


def run_coroutine(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to completion in a copy of the caller's context and return its result."""
    loop = _helper_loop()
    context = contextvars.copy_context()
    done: asyncio.Task[T] | None = None
    finished = threading.Event()

    def start() -> None:
        nonlocal done
        done = loop.create_task(coroutine, context=context)
        done.add_done_callback(lambda _task: finished.set())

    if threading.current_thread().name == "busway-bridge":
        coroutine.close()  # never to run: close it, or Python warns it was never awaited
        raise RuntimeError(
            "an async def handler was called from sync code that itself runs on busway's "
            "helper loop; call the bus's a-prefixed method (await bus.asend(...)) instead"
        )
    loop.call_soon_threadsafe(start)
    finished.wait()
    assert done is not None
    return done.result()
