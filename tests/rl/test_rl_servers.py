"""The requests surge sends to TRL's vllm-serve and to SGLang match the servers' own
request schemas (recorded in tests/rl/fixtures from their sources), in their order."""

from __future__ import annotations

import json
import random
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from surge.rl import (
    ReverseDigits,
    SGLangEngine,
    TinyLM,
    TinyLMConfig,
    TrainerStopped,
    VLLMServerEngine,
)
from surge.rl._rollout import _mix
from surge.rl._servers import server_names
from surge.sim import serve_in_thread
from surge.sim._policy import PolicyHost

FIXTURES = Path(__file__).parent / "fixtures"
TASK = ReverseDigits(length=3, digits=4)


class RecordingHost(PolicyHost):
    """The simulator's policy host, keeping every request it was sent."""

    def __init__(self, model: nn.Module, *, update_delay: float = 0.0) -> None:
        super().__init__(model, eos_id=TASK.EOS)
        self.seen: list[tuple[str, Any]] = []
        self.update_delay = update_delay

    async def handle(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        self.seen.append((f"{method} {path}", json.loads(body) if body else None))
        return await super().handle(method, path, body)

    def _sgl_from_disk(self, data: dict[str, Any]) -> None:
        time.sleep(self.update_delay)
        super()._sgl_from_disk(data)


def _model(seed: int) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM(TinyLMConfig(vocab_size=TASK.vocab_size, d_model=16, d_ff=32))


def _conforms(value: Any, kind: str) -> bool:
    for alt in kind.split("|"):
        if alt == "null" and value is None:
            return True
        if alt == "str" and isinstance(value, str):
            return True
        if alt == "bool" and isinstance(value, bool):
            return True
        if alt == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if alt == "float" and isinstance(value, float):
            return True
        if alt == "dict" and isinstance(value, dict):
            return True
        if alt == "list" and isinstance(value, list):
            return True
        if alt.startswith("list[") and isinstance(value, list):
            inner = alt[5:-1]
            if all(_conforms(v, inner) for v in value):
                return True
    return False


def _check_body(body: Any, schema: dict[str, Any] | None, where: str) -> None:
    if schema is None:
        assert body is None, f"{where}: the server takes no body, surge sent {body}"
        return
    assert isinstance(body, dict), where
    unknown = set(body) - set(schema)
    assert not unknown, f"{where}: fields the server does not define: {unknown}"
    for field, spec in schema.items():
        if spec.get("required"):
            assert field in body, f"{where}: required field {field!r} missing"
        if field not in body:
            continue
        assert _conforms(body[field], spec["type"]), f"{where}.{field}={body[field]!r}"
        if "pattern" in spec:
            values = body[field] if isinstance(body[field], list) else [body[field]]
            assert all(re.match(spec["pattern"], v) for v in values), f"{where}.{field}"
        if "fields" in spec:
            _check_body(body[field], spec["fields"], f"{where}.{field}")


def _check_against(fixture: dict[str, Any], seen: list[tuple[str, Any]]) -> None:
    for route, body in seen:
        assert route in fixture["endpoints"], f"{route} is not an endpoint of {fixture['server']}"
        _check_body(body, fixture["endpoints"][route]["body"], route)


def _check_order(order: dict[str, list[str]], seen: list[tuple[str, Any]]) -> None:
    """The weight protocol's calls, in order: connect once, then push after push
    (generation requests interleave freely)."""
    routes = [r for r, _ in seen if "generate" not in r and r != "POST /close_communicator/"]

    def regex(steps: list[str]) -> str:
        return "".join(
            f"(?:{re.escape(s[:-1])};)+" if s.endswith("+") else f"{re.escape(s)};" for s in steps
        )

    pattern = f"{regex(order['connect'])}(?:{regex(order['push'])})+"
    assert re.fullmatch(pattern, "".join(f"{r};" for r in routes)), routes


def _run(engine_cls: type, host: RecordingHost, versions: int = 2, **kw: Any) -> list[Any]:
    got: list[Any] = []
    errors: list[BaseException] = []
    done = threading.Condition()

    def on_result(rollouts: list[Any]) -> None:
        with done:
            got.extend(rollouts)
            done.notify_all()

    with serve_in_thread(policy=host) as server:
        engine = engine_cls(
            TASK,
            base_url=server.base_url,
            group_size=2,
            seed=0,
            on_result=on_result,
            on_error=errors.append,
            timeout=20.0,
            **kw,
        )
        try:
            for v in range(versions):
                engine.publish(_model(10 + v).state_dict(), v)
                engine.submit([2 * v, 2 * v + 1], min_version=v)
                want = 2 * v + 2
                with done:
                    assert done.wait_for(lambda: len(got) == want or bool(errors), 20)  # noqa: B023
        finally:
            engine.close()
    assert not errors, errors
    return got


def test_trl_vllm_serve_requests_match_the_recorded_schema() -> None:
    fixture = json.loads((FIXTURES / "trl_vllm_serve.json").read_text())
    host = RecordingHost(_model(0))
    got = _run(VLLMServerEngine, host, backend="gloo")
    _check_against(fixture, host.seen)
    _check_order(fixture["order"], host.seen)
    generate = [b for r, b in host.seen if r == "POST /generate/"]
    prompts = [TASK.sample_prompt(random.Random(_mix(0, t))) for t in (0, 1)]
    assert generate[0]["prompts"] == [" ".join(map(str, p)) for p in prompts]  # ids as text
    assert generate[0]["n"] == 2 and generate[0]["generation_kwargs"]["stop_token_ids"] == [12]
    names = [b["name"] for r, b in host.seen if r == "POST /update_named_param/"]
    assert names[: len(names) // 2] == list(_model(0).state_dict())
    assert ("POST /close_communicator/", None) in host.seen
    # the server now holds the last version, exactly; completions carry their version
    last = _model(11).state_dict()
    assert all(torch.equal(v, last[k]) for k, v in host.model.state_dict().items())
    assert sorted(int(r.min_version) for r in got) == [0, 0, 1, 1]


@pytest.mark.parametrize("weights", ["disk", "distributed"])
def test_sglang_requests_match_the_recorded_schema(weights: str, tmp_path: Path) -> None:
    fixture = json.loads((FIXTURES / "sglang.json").read_text())
    host = RecordingHost(_model(0))
    got = _run(SGLangEngine, host, weights=weights, directory=tmp_path, backend="gloo")
    _check_against(fixture, host.seen)
    _check_order(fixture["order"][weights], host.seen)
    updates = [b for r, b in host.seen if "update_weights" in r]
    assert [u["weight_version"] for u in updates] == ["0", "1"]
    if weights == "disk":  # a Hugging Face checkpoint folder per version, the old pruned
        assert (Path(updates[1]["model_path"]) / "model.safetensors").is_file()
    # each completion is tagged with the server's own weight_version
    assert sorted(int(r.min_version) for r in got) == [0, 0, 1, 1]
    assert host.weight_version == "1"


def test_wrapper_prefixes_go_and_tied_weights_are_sent_once() -> None:
    class Wrapped(nn.Module):  # the shape of HFCausalLM(model) with tied embeddings
        def __init__(self, inner: TinyLM) -> None:
            super().__init__()
            self.model = inner
            inner.head.weight = inner.tok.weight

    def tied(seed: int) -> TinyLM:
        m = _model(seed)
        m.head.weight = m.tok.weight
        return m

    assert server_names(["model.model.a", "model.lm_head.weight"]) == {
        "model.model.a": "model.a",
        "model.lm_head.weight": "lm_head.weight",
    }
    assert server_names(["model.a", "lm_head.weight"]) == {
        "model.a": "model.a",
        "lm_head.weight": "lm_head.weight",
    }
    host = RecordingHost(tied(0))
    trainer_side = Wrapped(tied(5))
    got: list[Any] = []
    with serve_in_thread(policy=host) as server:
        engine = VLLMServerEngine(
            TASK,
            base_url=server.base_url,
            group_size=2,
            seed=0,
            on_result=got.extend,
            on_error=pytest.fail,
            backend="gloo",
            timeout=20.0,
        )
        try:
            engine.publish(trainer_side.state_dict(), 0)
            engine.submit([0], min_version=0)
            deadline = time.monotonic() + 20
            while not got and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            engine.close()
    names = [b["name"] for r, b in host.seen if r == "POST /update_named_param/"]
    assert "tok.weight" in names and "head.weight" not in names  # tied: once
    assert not any(n.startswith("model.") for n in names)
    served = host.model.state_dict()
    for k, v in trainer_side.model.state_dict().items():
        assert torch.equal(served[k], v), k


def test_publish_returns_before_the_server_has_loaded_the_weights(tmp_path: Path) -> None:
    host = RecordingHost(_model(0), update_delay=0.5)
    with serve_in_thread(policy=host) as server:
        engine = SGLangEngine(
            TASK,
            base_url=server.base_url,
            group_size=2,
            seed=0,
            on_result=lambda r: None,
            on_error=pytest.fail,
            directory=tmp_path,
            timeout=20.0,
        )
        try:
            start = time.perf_counter()
            engine.publish(_model(1).state_dict(), 0)
            took = time.perf_counter() - start
            assert took < 0.25  # one copy into a send buffer, not the 0.5 s load
            assert engine.weight_stats().pulls == 0
            deadline = time.monotonic() + 10
            while engine.weight_stats().pulls == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert engine.weight_stats().version == 0
        finally:
            engine.close()


def test_generation_waits_for_min_version() -> None:
    host = RecordingHost(_model(0))
    got: list[Any] = []
    with serve_in_thread(policy=host) as server:
        engine = SGLangEngine(
            TASK,
            base_url=server.base_url,
            group_size=2,
            seed=0,
            on_result=got.extend,
            on_error=pytest.fail,
            weights="distributed",
            backend="gloo",
            timeout=20.0,
        )
        try:
            engine.publish(_model(1).state_dict(), 0)
            engine.submit([0, 1], min_version=1)  # needs a version not yet published
            time.sleep(0.3)
            assert not got and not any(r == "POST /generate" for r, _ in host.seen)
            engine.publish(_model(2).state_dict(), 1)
            deadline = time.monotonic() + 10
            while len(got) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            engine.close()
    assert [r.min_version for r in got] == [1, 1]


def test_a_temperature_the_trainer_cannot_match_is_refused() -> None:
    with pytest.raises(ValueError, match="HINT"):
        VLLMServerEngine(
            TASK,
            base_url="http://127.0.0.1:9",
            group_size=2,
            seed=0,
            on_result=lambda r: None,
            on_error=lambda e: None,
            temperature=0.7,
        )


def test_a_prompt_the_server_tokenizes_differently_stops_with_a_hint() -> None:
    host = RecordingHost(_model(0))
    errors: list[BaseException] = []
    with serve_in_thread(policy=host) as server:
        engine = VLLMServerEngine(
            TASK,
            base_url=server.base_url,
            group_size=2,
            seed=0,
            on_result=lambda r: None,
            on_error=errors.append,
            prompt_text=lambda ids: " ".join(str(i) for i in reversed(ids)),
            backend="gloo",
            timeout=20.0,
        )
        try:
            engine.publish(_model(1).state_dict(), 0)
            engine.submit([0], min_version=0)
            deadline = time.monotonic() + 10
            while not errors and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            engine.close()
    assert errors and isinstance(errors[0], TrainerStopped) and "HINT" in str(errors[0])


@pytest.mark.parametrize("engine_cls", [VLLMServerEngine, SGLangEngine])
def test_batches_are_pipelined_not_served_one_at_a_time(engine_cls: type) -> None:
    host = RecordingHost(_model(0))
    got: list[Any] = []
    kw: dict[str, Any] = {"backend": "gloo"}
    if engine_cls is SGLangEngine:
        kw["weights"] = "distributed"
    with serve_in_thread(policy=host) as server:
        engine = engine_cls(
            TASK, base_url=server.base_url, group_size=2, seed=0, on_result=got.extend,
            on_error=pytest.fail, timeout=20.0, concurrency=4, **kw,
        )  # fmt: skip
        try:
            engine.publish(_model(1).state_dict(), 0)
            for t in range(8):
                engine.submit([t], min_version=0)
            deadline = time.monotonic() + 20
            while len(got) < 8 and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            engine.close()
    assert sorted(r.ticket for r in got) == list(range(8))
    assert host.peak_in_flight >= 2  # several requests open at once on the server


def test_a_server_that_keeps_failing_stops_the_trainer_with_a_hint() -> None:
    class Broken(RecordingHost):
        async def handle(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
            if path == "/generate":
                self.seen.append((f"{method} {path}", None))
                return 500, {"error": "out of memory"}
            return await super().handle(method, path, body)

    host = Broken(_model(0))
    errors: list[BaseException] = []
    with serve_in_thread(policy=host) as server:
        engine = SGLangEngine(
            TASK, base_url=server.base_url, group_size=2, seed=0, on_result=pytest.fail,
            on_error=errors.append, weights="distributed", backend="gloo", timeout=20.0,
        )  # fmt: skip
        try:
            engine.publish(_model(1).state_dict(), 0)
            engine.submit([0], min_version=0)
            deadline = time.monotonic() + 20
            while not errors and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            engine.close()
    assert errors and isinstance(errors[0], TrainerStopped)
    assert "HINT" in str(errors[0])
    # each failure was followed by a resync: new group, the weights pushed again
    assert sum(r == "POST /init_weights_update_group" for r, _ in host.seen) > 1


def test_an_sglang_restart_between_requests_is_noticed_before_tokens_are_tagged() -> None:
    """No connection breaks, yet the new server's weight_version ("default") gives the
    restart away: the engine pushes the weights again before it keeps any tokens."""
    got: list[Any] = []
    weights = _model(1).state_dict()
    first = RecordingHost(_model(0))
    with serve_in_thread(policy=first) as server:
        port, url = server.port, server.base_url
        engine = SGLangEngine(
            TASK, base_url=url, group_size=2, seed=0, on_result=got.extend,
            on_error=pytest.fail, weights="distributed", backend="gloo", timeout=20.0,
        )  # fmt: skip
        engine.publish(weights, 0)
        engine.submit([0], min_version=0)
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.02)
    second = RecordingHost(_model(0))  # restarted from the initial checkpoint
    try:
        with serve_in_thread(policy=second, port=port):
            engine.submit([1], min_version=0)
            deadline = time.monotonic() + 20
            while len(got) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
    finally:
        engine.close()
    assert [r.ticket for r in got] == [0, 1] and all(r.min_version == 0 for r in got)
    routes = [r for r, _ in second.seen]
    # the first answer ("default") was thrown away; the weights went again; then tokens
    assert routes[0] == "POST /generate" and routes[-1] == "POST /generate"
    assert "POST /update_weights_from_distributed" in routes
    served = second.model.state_dict()
    assert all(torch.equal(served[k], v) for k, v in weights.items())
    assert engine.reconnects >= 1
