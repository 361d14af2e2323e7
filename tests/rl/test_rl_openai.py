"""OpenAIEngine against a fake vLLM: an httpx transport that runs a TinyLM."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Mapping
from typing import Any

import httpx
import pytest
import torch

from surge.rl import (
    OpenAIEngine,
    ReverseDigits,
    RLConfig,
    TinyLM,
    TinyLMConfig,
    Trainer,
    disk_weight_pusher,
)


class FakeVLLM:
    """Serves /v1/completions from its own TinyLM, the way vLLM answers with
    ``return_tokens_as_token_ids``; loads weights when told to."""

    def __init__(self, model: TinyLM) -> None:
        self.model = model.eval()
        self.version = -1
        self.bodies: list[dict[str, Any]] = []

    def load(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        self.model.load_state_dict(state)
        self.version = version

    async def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if request.url.path == "/update_weights_from_disk":
            self.load(torch.load(body["model_path"], weights_only=True), body["version"])
            return httpx.Response(200, json={"success": True})
        assert request.url.path == "/v1/completions"
        self.bodies.append(body)
        rng = torch.Generator().manual_seed(body["seed"])
        choices = []
        for i in range(body["n"]):
            seq = list(body["prompt"])
            tokens, lps = [], []
            with torch.no_grad():
                for _ in range(body["max_tokens"]):
                    logp = torch.log_softmax(self.model(torch.tensor([seq]))[0, -1], -1)
                    tok = int(torch.multinomial(logp.exp(), 1, generator=rng))
                    tokens.append(f"token_id:{tok}")
                    lps.append(float(logp[tok]))
                    seq.append(tok)
                    if tok in body["stop_token_ids"]:
                        break
            choices.append(
                {"index": i, "text": "", "logprobs": {"tokens": tokens, "token_logprobs": lps}}
            )
        random.Random(0).shuffle(choices)  # the engine must not rely on choice order
        return httpx.Response(200, json={"choices": choices})


def test_trainer_drives_an_openai_compatible_server(tmp_path: Any) -> None:
    task = ReverseDigits(length=3, digits=4)
    torch.manual_seed(0)
    cfg = TinyLMConfig(vocab_size=task.vocab_size, d_model=16, d_ff=32)
    policy, served = TinyLM(cfg), TinyLM(cfg)
    server = FakeVLLM(served)
    transport = httpx.MockTransport(server.handle)
    push = disk_weight_pusher(
        "http://vllm/update_weights_from_disk",
        tmp_path,
        client=httpx.Client(transport=httpx.MockTransport(_sync(server))),
    )
    rl = RLConfig(mode="async", max_staleness=1, prompts_per_batch=2, group_size=3)

    def factory(on_result: Any, on_error: Any) -> OpenAIEngine:
        return OpenAIEngine(
            task, base_url="http://vllm/v1", model="policy", group_size=3, seed=0,
            push_weights=push, on_result=on_result, on_error=on_error, transport=transport,
        )  # fmt: skip

    trainer = Trainer(policy, task, rl, engine_factory=factory)
    history = trainer.train(4)
    assert [t for s in history for t in s.tickets] == list(range(8))
    assert max(s.lag_max for s in history) <= 1
    assert server.version == 4  # the last push landed
    for name, tensor in policy.state_dict().items():
        assert torch.equal(tensor, served.state_dict()[name])
    body = server.bodies[0]
    assert body["n"] == 3 and body["return_tokens_as_token_ids"] is True
    assert body["prompt"][0] == task.BOS and body["stop_token_ids"] == [task.eos_id]
    assert all(s.ess > 0 for s in history)


def _sync(server: FakeVLLM) -> Any:
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        server.load(torch.load(body["model_path"], weights_only=True), body["version"])
        return httpx.Response(200, json={"success": True})

    return handler


def test_publish_does_not_wait_for_the_pusher_and_batches_wait_for_min_version() -> None:
    task = ReverseDigits(length=3, digits=4)
    torch.manual_seed(0)
    cfg = TinyLMConfig(vocab_size=task.vocab_size, d_model=16, d_ff=32)
    server = FakeVLLM(TinyLM(cfg))
    release = threading.Event()

    def slow_push(state: Mapping[str, torch.Tensor], version: int) -> None:
        release.wait(10)  # the server takes its time to load
        server.load(state, version)

    got: list[Any] = []
    engine = OpenAIEngine(
        task, base_url="http://vllm/v1", model="policy", group_size=2, seed=0,
        push_weights=slow_push, on_result=got.extend, on_error=pytest.fail,
        transport=httpx.MockTransport(server.handle),
    )  # fmt: skip
    try:
        start = time.perf_counter()
        engine.publish(TinyLM(cfg).state_dict(), 0)
        assert time.perf_counter() - start < 0.5  # a copy, not the push
        engine.submit([0], min_version=0)
        time.sleep(0.2)
        assert not server.bodies  # version 0 is not served yet: nothing sent
        release.set()
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.version == 0 and len(got) == 1 and got[0].min_version == 0
    finally:
        release.set()
        engine.close()
