"""One long-lived event loop per process, on a daemon thread, for the sync `surge.map`.

A fresh loop per call (`asyncio.run`) breaks the most common script: a module-level
`openai.AsyncOpenAI()` (or `httpx.AsyncClient`) binds its connection pool to the first
loop that uses it, and the second `surge.map` finds that loop closed. So every `map` in
a process runs on the same loop, created on first use and recreated in a forked child
(the thread does not survive a fork).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_owner_pid = 0


def background_loop() -> asyncio.AbstractEventLoop:
    """The process's background loop, started on first use."""
    global _loop, _thread, _owner_pid
    with _lock:
        if _loop is None or _owner_pid != os.getpid() or _thread is None or not _thread.is_alive():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="surge-loop", daemon=True)
            thread.start()
            _loop, _thread, _owner_pid = loop, thread, os.getpid()
        return _loop


def run_in_background(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on the background loop and block until it is done.

    Ctrl-C (or any exception raised into the waiting thread) cancels it there and waits
    for the cancellation to finish, so calls in flight are cancelled cleanly before the
    KeyboardInterrupt goes on.
    """
    loop = background_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        coro.close()
        raise RuntimeError(
            "surge.map was called from a call surge.map is running, which would wait for "
            "itself forever. HINT: inside async code, use `await surge.gather(...)`."
        )
    outcome: concurrent.futures.Future[T] = concurrent.futures.Future()
    tasks: list[asyncio.Task[T]] = []

    def finish(task: asyncio.Task[T]) -> None:
        if task.cancelled():
            # Not outcome.cancel(): that does not wake concurrent.futures.wait().
            outcome.set_exception(concurrent.futures.CancelledError())
        elif (error := task.exception()) is not None:
            outcome.set_exception(error)
        else:
            outcome.set_result(task.result())

    def start() -> None:
        task = loop.create_task(coro)
        tasks.append(task)
        task.add_done_callback(finish)

    loop.call_soon_threadsafe(start)
    try:
        return outcome.result()
    except BaseException:
        if not outcome.done():  # interrupted while waiting: cancel it on its own loop
            loop.call_soon_threadsafe(lambda: tasks[0].cancel() if tasks else None)
            concurrent.futures.wait([outcome], timeout=30)
        raise


def _forget_after_fork() -> None:
    # The child has the parent's loop object but not its thread: start afresh on demand.
    global _loop, _thread, _owner_pid, _lock
    _loop, _thread, _owner_pid, _lock = None, None, 0, threading.Lock()


def _stop_at_exit() -> None:
    loop, thread = _loop, _thread
    if loop is not None and thread is not None and _owner_pid == os.getpid():
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=1.0)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
atexit.register(_stop_at_exit)
