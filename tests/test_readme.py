"""The README's "In a program" examples, run as written, with the official openai SDK
pointed at the simulator (OPENAI_BASE_URL, a dummy key), so the documented pattern
cannot silently break."""

from __future__ import annotations

import ast
import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import STALL_429S, TIGHT

import surge
import surge.sim
from surge._loop import run_in_background

README = Path(__file__).resolve().parent.parent / "README.md"


def section_examples(title: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else None]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def read_lines(path: str) -> Iterator[str]:
    """The README's stand-in for reading a big file lazily."""
    for i in range(30):
        yield f"{path} line {i}: a sentence worth summarising."


def test_the_examples_are_there() -> None:
    examples = section_examples("In a program")
    assert len(examples) == 2
    assert all("surge.wire(openai.AsyncOpenAI())" in code for code in examples)


@pytest.fixture
def simulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[surge.sim.SimServer]:
    with surge.sim.serve_in_thread(profile="fast", **TIGHT) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-dummy")
        yield server


def test_the_async_example_runs_as_written(
    simulator: surge.sim.SimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code = section_examples("In a program")[0]
    texts = [f"document {i}: the quick brown fox jumps over the lazy dog" for i in range(60)]
    namespace: dict[str, Any] = {"texts": texts, "read_lines": read_lines}
    compiled = compile(code, str(README), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)

    async def main() -> None:
        outcome = eval(compiled, namespace)  # a coroutine: the example awaits at top level
        if outcome is not None:
            await outcome
        await namespace["client"].close()

    asyncio.run(main())
    results = namespace["results"]
    assert len(results) == 60 and all(r.ok for r in results)
    assert [r.index for r in results] == list(range(60))
    assert all(r.value.choices[0].message.content for r in results)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 60 and printed[0].startswith("0 ChatCompletion(")
    stats = simulator.stats()
    refused = stats["by_status"].get("429", 0)
    assert refused <= STALL_429S
    assert stats["requests"] == 90 + refused  # 60 + 30 from read_lines, each sent once


def test_the_script_example_runs_as_written(simulator: surge.sim.SimServer) -> None:
    code = section_examples("In a program")[1]
    texts = [f"text {i}" for i in range(40)]
    namespace: dict[str, Any] = {"texts": texts}
    exec(compile(code, str(README), "exec"), namespace)  # a plain script: no loop running
    # The client's connections live on surge.map's background loop: close them there.
    run_in_background(namespace["client"].close())
    vectors = namespace["vectors"]
    assert len(vectors) == 40
    expected = surge.sim.embedding_vector("text 0")
    assert vectors[0] == pytest.approx(expected)
    stats = simulator.stats()
    refused = stats["by_status"].get("429", 0)
    assert refused <= STALL_429S
    assert stats["requests"] == 40 + refused
