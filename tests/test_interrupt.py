"""Ctrl-C on a real process: in-flight calls are cancelled cleanly, nothing is left pending."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

SCRIPT = textwrap.dedent(
    """
    import asyncio, sys, surge

    async def call(i):
        if i == 0:
            print("started", flush=True)
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            print(f"cancelled {i}", flush=True)
            raise
        return i

    try:
        surge.map(call, range(1000), concurrency=4)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
    """
)


def test_ctrl_c_cancels_in_flight_calls_without_warnings() -> None:
    process = subprocess.Popen(
        [sys.executable, "-X", "dev", "-c", SCRIPT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "started"
    time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert sorted(out.split("\n")[:4]) == [
        "cancelled 0",
        "cancelled 1",
        "cancelled 2",
        "cancelled 3",
    ]
    assert "interrupted" in out
    assert "Task was destroyed" not in err and "never awaited" not in err, err
