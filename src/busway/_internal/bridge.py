"""Running a coroutine from synchronous code, whether or not an event loop runs here."""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
from collections.abc import Awaitable, Callable, Coroutine
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


def run_around(
    around: Callable[[Callable[[], Awaitable[Any]]], Coroutine[Any, Any, T]],
    inner: Callable[[], Any],
) -> T:
    """Run ``around(proceed)`` on the helper loop, and ``inner`` here, on the calling thread,
    each time it awaits ``proceed()``: what ``inner`` returns or raises comes back there.

    How sync code runs an interceptor's ``aaround``: the handler inside it stays on its own
    thread, where its time limit, its transaction and its nested sends expect it.
    """
    if threading.current_thread().name == "busway-bridge":
        raise RuntimeError(
            "an interceptor's aaround was called from sync code that itself runs on busway's "
            "helper loop; call the bus's a-prefixed method (await bus.asend(...)) instead"
        )
    loop = _helper_loop()
    requests: queue.SimpleQueue[tuple[contextvars.Context, asyncio.Future[Any]] | None] = (
        queue.SimpleQueue()
    )

    async def proceed() -> Any:
        waiter = asyncio.get_running_loop().create_future()
        requests.put((contextvars.copy_context(), waiter))
        return await waiter

    context = contextvars.copy_context()
    started: list[asyncio.Task[T]] = []

    def start() -> None:
        task = loop.create_task(around(proceed), context=context)
        task.add_done_callback(lambda _task: requests.put(None))
        started.append(task)

    loop.call_soon_threadsafe(start)
    while (request := requests.get()) is not None:
        inner_context, waiter = request
        try:
            value = inner_context.run(inner)
        except BaseException as error:
            loop.call_soon_threadsafe(_settle, waiter, None, error)
        else:
            loop.call_soon_threadsafe(_settle, waiter, value, None)
    return started[0].result()


def _settle(waiter: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if waiter.done():
        return  # the awaiting coroutine was cancelled meanwhile
    if error is not None:
        waiter.set_exception(error)
    else:
        waiter.set_result(value)
