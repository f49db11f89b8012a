"""Running a coroutine from synchronous code, whether or not an event loop runs here."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

_executor: ThreadPoolExecutor | None = None


def run_coroutine(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    # A loop already runs in this thread and cannot be re-entered: run on a helper thread,
    # in a copy of this context so the current message and transaction travel along.
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(thread_name_prefix="busway-bridge")
    context = contextvars.copy_context()
    return _executor.submit(context.run, asyncio.run, coroutine).result()
