"""The latest-wins hand-off of weights from the trainer to a thread that pushes them.

``publish`` must cost the training step no more than a copy into send buffers, so the
push (seconds, for a real server) runs on a background thread. Only the newest weights
matter to a server: a job put while another is being pushed replaces any not yet
started, and a version never goes backwards.

The engines that use this share one condition with it, so that their own waits (for a
version to be served, for a push to end) wake on the same notifications.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

Job = tuple[list[torch.Tensor], int]  # packed send buffers, and their version


class Publisher:
    """One pending job and the thread that hands the newest one to ``push``.

    ``stopping`` is the engine's own closing flag, read under ``cond``; with
    ``drain_on_close`` a job put before closing is still pushed, otherwise it is
    dropped. ``wake`` is the engine's own reason to run ``push(None)`` ahead of any
    pending job (a server that went away and must be resynced). Whatever ``connect`` or
    ``push`` raises ends the thread and goes to ``on_error``.
    """

    def __init__(
        self,
        cond: threading.Condition,
        *,
        name: str,
        push: Callable[[Job | None], None],
        on_error: Callable[[BaseException], None],
        stopping: Callable[[], bool],
        drain_on_close: bool,
        connect: Callable[[], None] | None = None,
        wake: Callable[[], bool] | None = None,
    ) -> None:
        self._cond = cond
        self._push, self._on_error = push, on_error
        self._stopping, self._drain = stopping, drain_on_close
        self._connect = connect
        self._wake = wake or (lambda: False)
        self._pending: Job | None = None
        self.pushing = False  # read under cond: a push is under way
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread; the engine sets its closing flag and notifies first."""
        self._thread.join(timeout=timeout)

    def put(self, job: Job, *, confirmed: int) -> None:
        """Replace the pending job; ``confirmed`` is the version the server is known to serve.

        Raises ValueError unless the version is newer than both.
        """
        version = job[1]
        with self._cond:
            newest = self._pending[1] if self._pending else confirmed
            if version <= newest:
                raise ValueError(f"weights version must increase: have {newest}, got {version}")
            self._pending = job
            self._cond.notify_all()

    def requeue(self, job: Job) -> None:
        """Put back a job whose push failed, unless a newer one is already waiting."""
        with self._cond:
            if self._pending is None:
                self._pending = job

    def _run(self) -> None:
        try:
            if self._connect is not None:
                self._connect()
            while True:
                with self._cond:
                    self._cond.wait_for(
                        lambda: self._stopping() or self._pending is not None or self._wake()
                    )
                    if self._stopping() and not (self._drain and self._pending is not None):
                        return
                    job: Job | None = None
                    if not self._wake():
                        job, self._pending = self._pending, None
                    self.pushing = True
                self._push(job)
                with self._cond:
                    self.pushing = False
                    self._cond.notify_all()
        except BaseException as exc:
            self._on_error(exc)
