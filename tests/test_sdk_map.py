"""surge.map from a plain script with a module-level async client: again and again, inside
a running loop, and in a forked child. A real subprocess, against the simulator."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import surge.sim

SCRIPT = textwrap.dedent(
    """
    import asyncio, os, sys
    import openai, surge

    # Module level, as scripts do: its connections belong to the first loop that uses it.
    client = surge.wire(openai.AsyncOpenAI(base_url=sys.argv[1], api_key="k"))
    plain = openai.AsyncOpenAI(base_url=sys.argv[1], api_key="k", max_retries=0)

    def ask(sdk):
        async def call(i):
            reply = await sdk.chat.completions.create(
                model="m", messages=[{"role": "user", "content": f"item {i}"}]
            )
            return reply.choices[0].message.content
        return call

    def ok(results):
        failed = [repr(r.error) for r in results if not r.ok]
        return f"{sum(r.ok for r in results)} ok {failed[:1]}"

    for n in range(3):
        print("call", n, ok(surge.map(ask(client), range(20), concurrency=5)), flush=True)
    print("unwired", ok(surge.map(ask(plain), range(20), concurrency=5)), flush=True)

    async def notebook_cell():
        return surge.map(ask(client), range(20), concurrency=5)

    print("in a loop", ok(asyncio.run(notebook_cell())), flush=True)

    if hasattr(os, "fork"):
        child = os.fork()
        if child == 0:
            fresh = surge.wire(openai.AsyncOpenAI(base_url=sys.argv[1], api_key="k"))
            print("child", ok(surge.map(ask(fresh), range(20), concurrency=5)), flush=True)
            os._exit(0)
        os.waitpid(child, 0)
    print("after fork", ok(surge.map(ask(client), range(20), concurrency=5)), flush=True)
    """
)


def test_map_three_times_inside_a_loop_and_after_a_fork() -> None:
    with surge.sim.serve_in_thread(profile="fast") as server:
        done = subprocess.run(
            [sys.executable, "-X", "dev", "-c", SCRIPT, server.url],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    expected = [f"call {n} 20 ok []" for n in range(3)]
    expected += ["unwired 20 ok []", "in a loop 20 ok []"]
    if hasattr(os, "fork"):
        expected.append("child 20 ok []")
    expected.append("after fork 20 ok []")
    assert lines == expected, done.stderr
    assert "Event loop is closed" not in done.stderr
    assert "Task was destroyed" not in done.stderr and "never awaited" not in done.stderr


def test_map_called_from_a_call_it_runs_is_refused_with_a_hint() -> None:
    async def nested(i: int) -> object:
        return surge.map(lambda x: x, [i])

    [result] = surge.map(nested, [1])
    assert isinstance(result.error, RuntimeError) and "HINT" in str(result.error)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_the_background_loop_is_one_per_process() -> None:
    from surge._loop import background_loop

    assert background_loop() is background_loop()
