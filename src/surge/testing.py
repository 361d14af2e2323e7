"""Test helpers: an event loop on virtual time, so time-shaped tests run in milliseconds.

Everything surge does with time goes through the running loop's clock (`loop.time()`,
`asyncio.sleep`, `loop.call_at`, `asyncio.timeout`). `VirtualTimeLoop` keeps that clock
virtual: whenever no callback is ready and no I/O is pending, it jumps straight to the
next timer instead of waiting for it (the idea behind trio's autojumping MockClock).

    def test_backoff():
        elapsed = surge.testing.run(main())   # a 60 s scenario, in milliseconds

Real I/O still works (sockets are polled without blocking before each jump), but work
done in threads is invisible to it: a loop that only waits on a thread jumps ahead. So
are bytes still in the kernel: a loopback write not yet readable at the other end (seen
3-18 ms late on a busy machine) does not hold the clock, so while a timer is pending the
clock can run ahead of a socket, and a timeout can fire that wall time would not reach.
Keep timeouts out of virtual-time tests that talk to a real socket.

`redis_server()` starts a throwaway redis-server for tests and benchmarks of the shared
limiter.
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["VirtualTimeLoop", "redis_server", "run"]


class _JumpingSelector(selectors.DefaultSelector):
    """A selector whose timed waits advance the loop's virtual clock instead of sleeping."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = super().select(0)
        if events or timeout is None or timeout <= 0:
            # No timer pending (timeout None) means only I/O can wake the loop: wait for it.
            return events if events or timeout is not None else super().select(None)
        assert self.loop is not None
        self.loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose `time()` only moves when every task is waiting on a timer."""

    def __init__(self, start: float = 0.0) -> None:
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.loop = self
        self._virtual_now = start

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        if seconds > 0:
            self._virtual_now += seconds


def run(main: Coroutine[Any, Any, T], *, start: float = 0.0) -> T:
    """Run a coroutine to completion on a fresh VirtualTimeLoop, like asyncio.run."""
    loop = VirtualTimeLoop(start)
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


_REDIS_START_SECONDS = 10.0


@contextlib.contextmanager
def redis_server(*, tcp: bool = False) -> Iterator[str]:
    """Start a throwaway redis-server (no persistence) in a temp dir; yield its URL.

    The URL is `unix:///tmp/.../redis.sock` by default, or `redis://127.0.0.1:PORT/0`
    with `tcp=True` (for clients that only take a host and port). Both work as
    `surge.Limiter(shared=url, key=...)`. The server answers PING before the block
    starts; on exit it is terminated and its folder removed.

        with surge.testing.redis_server() as url:
            limiter = surge.Limiter(rpm=600, shared=url, key="test")

    Raises FileNotFoundError when redis-server is not on PATH (callers decide whether
    to skip), and RuntimeError when it does not answer within 10 s.
    """
    executable = shutil.which("redis-server")
    if executable is None:
        raise FileNotFoundError(
            "redis-server is not on PATH. HINT: apt-get install -y redis-server"
        )
    folder = Path(tempfile.mkdtemp(prefix="surge-redis-"))
    path = folder / "redis.sock"
    if tcp:
        port = _free_port()
        where = ["--port", str(port), "--bind", "127.0.0.1"]
        address: str | tuple[str, int] = ("127.0.0.1", port)
        url = f"redis://127.0.0.1:{port}/0"
    else:
        where = ["--port", "0", "--unixsocket", str(path)]
        address, url = str(path), f"unix://{path}"
    log = folder / "redis.log"
    try:
        with log.open("wb") as output:
            # stdout goes to a file, not a pipe nobody reads: a full pipe would block it.
            server = subprocess.Popen(
                [executable, *where, "--save", "", "--appendonly", "no", "--dir", str(folder)],
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait_for_pong(server, address, log)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _free_port() -> int:
    # The port is free now; redis-server binds it a moment later (a race we accept: a
    # clash shows up as the server exiting, reported by _wait_for_pong).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _wait_for_pong(
    server: subprocess.Popen[bytes], address: str | tuple[str, int], log: Path
) -> None:
    """Return once the server answers PING; raise, with its log, if it exits or stalls."""
    # A raw inline PING, so that this needs no redis client installed.
    deadline = time.monotonic() + _REDIS_START_SECONDS
    family = socket.AF_INET if isinstance(address, tuple) else socket.AF_UNIX
    while True:
        if server.poll() is not None:
            raise RuntimeError(
                f"redis-server exited with status {server.returncode} before answering "
                f"on {address}: {_tail(log)}"
            )
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.settimeout(1.0)
                probe.connect(address)
                probe.sendall(b"PING\r\n")
                if probe.recv(64).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"redis-server did not answer PING on {address} within "
                f"{_REDIS_START_SECONDS:.0f} s: {_tail(log)}"
            )
        time.sleep(0.02)


def _tail(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(lines[-5:]) or "(empty log)"
