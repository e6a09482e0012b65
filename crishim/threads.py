"""A thread of its own for one blocking call, instead of the event loop's shared pool.

For work that may wait on something outside crishim for long (a namespace it entered, a registry or an
admin client pacing a stream, a port that drops SYNs): on the pool, a few such waits would hold every
pooled thread, and with them every RPC that needs one. The thread exits when the call returns, so one
that changed its namespaces is never reused.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def run_in_thread(fn: Callable[[], T]) -> asyncio.Future[T]:
    """Run `fn` on a new thread that exits afterwards; its result or exception settles the future
    (a cancelled future just lets the thread finish)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(setter: Callable[[], None]) -> None:
        if not future.done():
            setter()

    def body() -> None:
        try:
            value = fn()
        except BaseException as exc:  # delivered to the awaiting coroutine
            error = exc
            loop.call_soon_threadsafe(settle, lambda: future.set_exception(error))
        else:
            loop.call_soon_threadsafe(settle, lambda: future.set_result(value))

    threading.Thread(target=body, name="crishim-thread", daemon=True).start()
    return future
