"""A real torch policy behind the inference-server endpoints surge.rl speaks.

``surge.sim.serve(policy=model)`` (or ``surge sim --policy tiny``) answers, on the CPU,
with an actual model, the endpoints of the two servers :mod:`surge.rl` drives:

- TRL's ``trl vllm-serve`` (huggingface/trl ``trl/scripts/vllm_serve.py``):
  ``GET /health/``, ``GET /get_world_size/``, ``POST /generate/`` (prompts as text, here
  whitespace-separated token ids; answers ``prompt_ids``, ``completion_ids``,
  ``logprobs``), ``POST /init_communicator/``, ``POST /update_named_param/``,
  ``POST /reset_prefix_cache/``, ``POST /close_communicator/``.
- SGLang (sgl-project/sglang ``python/sglang/srt/entrypoints/http_server.py``):
  ``POST /generate`` (``input_ids``; answers ``meta_info.output_token_logprobs`` and
  ``meta_info.weight_version``), ``POST /update_weights_from_disk`` (a Hugging Face
  checkpoint folder), ``POST /init_weights_update_group``,
  ``POST /update_weights_from_distributed``, ``GET /get_weight_version``, ``GET /health``.

Weight broadcasts run over gloo where the real servers use NCCL: same group shapes (TRL:
the server's worker is rank 0 and hosts the store, the client is the last rank; SGLang:
the trainer is rank 0 and hosts the rendezvous, the server joins at ``rank_offset``).
Generation and weight loads take one lock, so a request never sees half-loaded weights
from SGLang's atomic updates; TRL's per-parameter updates land one parameter at a time,
as they do on the real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from surge.rl._groups import BroadcastGroup, gloo_group
from surge.rl._weights import WeightLayout

__all__ = ["PolicyHost", "hosted_policy", "tiny_policy"]

_GET = {"/health/", "/health", "/get_world_size/", "/get_weight_version"}
_POST = {
    "/generate/",
    "/init_communicator/",
    "/update_named_param/",
    "/reset_prefix_cache/",
    "/close_communicator/",
    "/generate",
    "/update_weights_from_disk",
    "/init_weights_update_group",
    "/update_weights_from_distributed",
}
_WRAPPERS = ("model.", "module.", "_orig_mod.")


def tiny_policy(seed: int = 0) -> tuple[nn.Module, int]:
    """The policy ``surge sim --policy tiny`` serves: the ``surge rl demo`` model (a
    TinyLM for ReverseDigits(length=4, digits=4)), seeded; returns it and its EOS id."""
    from surge.rl import ReverseDigits, TinyLM, TinyLMConfig

    task = ReverseDigits(length=4, digits=4)
    torch.manual_seed(seed)
    return TinyLM(TinyLMConfig(vocab_size=task.vocab_size, d_model=32, d_ff=64)), task.EOS


class PolicyHost:
    """Serves ``model`` behind the TRL and SGLang endpoints; see the module docstring."""

    def __init__(self, model: nn.Module, *, eos_id: int | None = None, timeout: float = 60.0):
        self.model = model.eval()
        self.eos_id = eos_id
        self.timeout = timeout
        self.weight_version = "default"  # SGLang's name before the first update
        self.lock = threading.Lock()
        self.requests = 0
        self.updates = 0
        self.closed = False
        self.in_flight = 0  # generation requests being answered right now
        self.peak_in_flight = 0
        own = self.model.state_dict()
        self._layout = WeightLayout.of(own)
        self._own = own
        self._trl_group: BroadcastGroup | None = None
        self._trl_rank = 1
        self._trl_ready = threading.Event()
        self._trl_jobs: queue.Queue[tuple[str, torch.dtype, list[int]] | None] = queue.Queue()
        self._trl_worker: threading.Thread | None = None
        self._sgl_group: BroadcastGroup | None = None

    # -- names ---------------------------------------------------------------------------

    def _target(self, name: str) -> torch.Tensor:
        """The model's own tensor for a name the client sent (wrapper prefixes re-added)."""
        own: dict[str, torch.Tensor] = self._own
        if name in own:
            return own[name]
        for prefix in _WRAPPERS:
            if prefix + name in own:
                return own[prefix + name]
        raise KeyError(f"the served model has no weight {name!r}")

    def _load(self, tensors: dict[str, torch.Tensor], version: str | None, *, whole: bool) -> None:
        """Copy ``tensors`` into the model under the lock; a ``whole`` update (SGLang's)
        must cover every weight (tied ones once)."""
        targets = {name: self._target(name) for name in tensors}
        if whole:
            covered = {id(t) for t in targets.values()}
            missing = [e.name for e in self._layout.entries if id(self._own[e.name]) not in covered]
            if missing:
                raise KeyError(f"the update lacks {missing[:3]}")
        with self.lock, torch.no_grad():
            for name, value in tensors.items():
                targets[name].copy_(value)
            if version is not None:
                self.weight_version = version
            self.updates += 1

    # -- ASGI ----------------------------------------------------------------------------

    def serves(self, method: str, path: str) -> bool:
        return (method == "GET" and path in _GET) or (method == "POST" and path in _POST)

    async def handle(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        """Answer one request: (status, JSON-able body)."""
        try:
            data = json.loads(body) if body else {}
        except ValueError:
            return 400, {"error": "body is not JSON"}
        if self.closed:
            return 503, {"error": "the server is shutting down"}
        try:
            return 200, await self._dispatch(method, path, data)
        except Exception as exc:
            if self.closed:  # a broadcast cut short by the shutdown
                return 503, {"error": "the server is shutting down"}
            return 400, {"error": f"{type(exc).__name__}: {exc}"}

    async def _dispatch(self, method: str, path: str, data: dict[str, Any]) -> Any:
        if method == "GET":
            if path == "/health/":
                return {"status": "ok"}
            if path == "/health":  # SGLang answers an empty 200
                return {}
            if path == "/get_world_size/":
                return {"world_size": 1}
            return {"weight_version": self.weight_version}
        if path in ("/generate/", "/generate"):
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            try:
                generate = self._trl_generate if path == "/generate/" else self._sgl_generate
                return await asyncio.to_thread(generate, data)
            finally:
                self.in_flight -= 1
        if path == "/init_communicator/":
            self._trl_init(data)
            return {"message": "Request received, initializing communicator"}
        if path == "/update_named_param/":
            dtype = getattr(torch, str(data["dtype"]).split(".")[-1])
            self._trl_jobs.put((str(data["name"]), dtype, [int(x) for x in data["shape"]]))
            return {"message": "Request received, updating named parameter"}
        if path == "/reset_prefix_cache/":
            # No prefix cache here; answer once every announced update has landed, as
            # the real server's reset runs after the updates queued before it.
            await asyncio.to_thread(self._trl_drain)
            return {"message": "Request received, resetting prefix cache status: True"}
        if path == "/close_communicator/":
            self._trl_close()
            return {"message": "Request received, closing communicator"}
        if path == "/update_weights_from_disk":
            await asyncio.to_thread(self._sgl_from_disk, data)
            return {"success": True, "message": "Succeeded to update model weights.",
                    "num_paused_requests": 0}  # fmt: skip
        if path == "/init_weights_update_group":
            await asyncio.to_thread(self._sgl_init, data)
            return {"success": True, "message": "Succeeded to initialize custom process group."}
        await asyncio.to_thread(self._sgl_from_distributed, data)
        return {"success": True, "message": "Succeeded to update parameter online."}

    # -- generation ----------------------------------------------------------------------

    @torch.no_grad()
    def _sample(
        self, prompts: list[list[int]], max_tokens: int, temperature: float, stop: set[int],
        seed: int | None,
    ) -> tuple[list[list[int]], list[list[float]], str]:  # fmt: skip
        """Sample one completion per prompt row; raw (temperature-1) log-probs, as vLLM and
        SGLang return by default."""
        rng = torch.Generator().manual_seed(seed if seed is not None else self.requests)
        with self.lock:
            self.requests += 1
            version = self.weight_version
            by_len: dict[int, list[int]] = {}
            for i, p in enumerate(prompts):
                by_len.setdefault(len(p), []).append(i)
            ids: list[list[int]] = [[] for _ in prompts]
            lps: list[list[float]] = [[] for _ in prompts]
            for rows in by_len.values():
                seq = torch.tensor([prompts[i] for i in rows], dtype=torch.long)
                alive = [True] * len(rows)
                prefill = getattr(self.model, "prefill", None)
                decode = getattr(self.model, "decode", None)
                cache: Any = None
                for step in range(max_tokens):
                    if prefill is None or decode is None:
                        raw = self.model(seq)[:, -1]
                    elif cache is None:
                        raw, cache = prefill(seq)
                    else:
                        raw, cache = decode(seq[:, -1], cache)
                    logp = torch.log_softmax(raw.float(), dim=-1)
                    probs = torch.softmax(raw.float() / max(temperature, 1e-6), dim=-1)
                    tok = torch.multinomial(probs, 1, generator=rng)[:, 0]
                    for j, i in enumerate(rows):
                        if alive[j]:
                            t = int(tok[j])
                            ids[i].append(t)
                            lps[i].append(float(logp[j, t]))
                            alive[j] = t not in stop
                    seq = torch.cat([seq, tok[:, None]], dim=1)
                    if not any(alive) or step + 1 == max_tokens:
                        break
            return ids, lps, version

    def _stop_ids(self, given: Any) -> set[int]:
        stop = {int(x) for x in (given or [])}
        if self.eos_id is not None:
            stop.add(self.eos_id)
        return stop

    def _trl_generate(self, data: dict[str, Any]) -> dict[str, Any]:
        kwargs = dict(data.get("generation_kwargs") or {})
        prompts = [[int(x) for x in str(p).split()] for p in data["prompts"]]
        n = int(data.get("n", 1))
        rows = [p for p in prompts for _ in range(n)]
        ids, lps, _ = self._sample(
            rows,
            int(data.get("max_tokens", 16)),
            float(data.get("temperature", 1.0)),
            self._stop_ids(kwargs.get("stop_token_ids")),
            kwargs.get("seed"),
        )
        return {"prompt_ids": prompts, "completion_ids": ids, "logprobs": lps}

    def _sgl_generate(self, data: dict[str, Any]) -> Any:
        sp = data.get("sampling_params") or {}
        single = bool(data["input_ids"]) and isinstance(data["input_ids"][0], int)
        prompts = [data["input_ids"]] if single else data["input_ids"]
        ids, lps, version = self._sample(
            [[int(x) for x in p] for p in prompts],
            int(sp.get("max_new_tokens", 128)),
            float(sp.get("temperature", 1.0)),
            self._stop_ids(sp.get("stop_token_ids")),
            sp.get("sampling_seed"),
        )
        stop = self._stop_ids(sp.get("stop_token_ids"))
        out = [
            {
                "text": "",
                "output_ids": i,
                "meta_info": {
                    "prompt_tokens": len(p),
                    "completion_tokens": len(i),
                    "finish_reason": {"type": "stop" if i and i[-1] in stop else "length"},
                    "output_token_logprobs": [[lp, t, None] for lp, t in zip(row, i, strict=True)],
                    "weight_version": version,
                },
            }
            for p, i, row in zip(prompts, ids, lps, strict=True)
        ]
        return out[0] if single else out

    # -- TRL's weight group ----------------------------------------------------------------

    def _trl_init(self, data: dict[str, Any]) -> None:
        self._trl_close()
        world = int(data["world_size"])
        port = int(data["port"])
        self._trl_rank = world - 1
        self._trl_ready.clear()
        self._trl_jobs = queue.Queue()
        jobs = self._trl_jobs

        def work() -> None:  # fire and forget, as the real server's collective_rpc
            group = gloo_group("127.0.0.1", port, 0, world, timeout=self.timeout)
            self._trl_group = group
            self._trl_ready.set()
            while (job := jobs.get()) is not None:
                name, dtype, shape = job
                try:
                    tensor = torch.empty(shape, dtype=dtype)
                    group.broadcast(tensor, src=self._trl_rank)
                    group.barrier()
                    self._load({name: tensor}, None, whole=False)
                finally:
                    jobs.task_done()
            jobs.task_done()

        self._trl_worker = threading.Thread(target=work, name="surge-sim-trl-group", daemon=True)
        self._trl_worker.start()

    def _trl_drain(self) -> None:
        if self._trl_worker is not None:
            self._trl_ready.wait(self.timeout)
            self._trl_jobs.join()

    def _trl_close(self) -> None:
        if self._trl_worker is not None:
            self._trl_jobs.put(None)
            self._trl_worker.join(timeout=1.0)
            self._trl_worker = None
        if self._trl_group is not None:
            self._trl_group.close()
            self._trl_group = None

    # -- SGLang's updates --------------------------------------------------------------------

    def _sgl_from_disk(self, data: dict[str, Any]) -> None:
        from safetensors.torch import load_file

        folder = Path(str(data["model_path"]))
        files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else [folder]
        if not files:
            raise ValueError(f"no *.safetensors in {folder}")
        tensors: dict[str, torch.Tensor] = {}
        for f in files:
            tensors.update(load_file(str(f)))
        self._load(tensors, str(data.get("weight_version") or self.weight_version), whole=True)

    def _sgl_init(self, data: dict[str, Any]) -> None:
        if data.get("backend", "nccl") != "gloo":
            raise ValueError("the simulator's weight group is gloo (no GPU here)")
        if self._sgl_group is not None:
            self._sgl_group.close()
        # The key layout torch's process-group helper gives a gloo group named
        # group_name, which is how SGLang's server (and surge's trainer side) make theirs.
        self._sgl_group = gloo_group(
            str(data["master_address"]),
            int(data["master_port"]),
            int(data["rank_offset"]),
            int(data["world_size"]),
            prefix=f"{data.get('group_name', 'weight_update_group')}/",
            device_prefix="cpu/",
            timeout=self.timeout,
        )

    def _sgl_from_distributed(self, data: dict[str, Any]) -> None:
        group = self._sgl_group
        if group is None:
            raise RuntimeError("no weight update group. HINT: POST /init_weights_update_group")
        tensors = {}
        for name, dtype, shape in zip(data["names"], data["dtypes"], data["shapes"], strict=True):
            tensor = torch.empty([int(x) for x in shape], dtype=getattr(torch, dtype))
            group.broadcast(tensor, src=0)
            tensors[str(name)] = tensor
        self._load(tensors, str(data.get("weight_version") or self.weight_version), whole=True)

    def close(self) -> None:
        self.closed = True
        self._trl_close()
        if self._sgl_group is not None:
            self._sgl_group.close()
            self._sgl_group = None


@contextlib.contextmanager
def hosted_policy(trainer: Any, *, protocol: str = "sglang") -> Iterator[Any]:
    """Serve a copy of ``trainer``'s policy on a simulator in this process and point the
    trainer at it: generation then goes over HTTP (SGLang's ``/generate`` or TRL's
    ``/generate/``) and weights over a gloo group, the whole server path of
    ``surge rl demo --server``. Yields the running server."""
    import copy

    from surge.rl import SGLangEngine, VLLMServerEngine
    from surge.sim.server import serve_in_thread

    host = PolicyHost(copy.deepcopy(trainer.model).cpu(), eos_id=trainer.task.eos_id)
    cfg = trainer.config
    with serve_in_thread(policy=host) as server:

        def factory(on_result: Any, on_error: Any) -> Any:
            common: dict[str, Any] = {
                "base_url": server.base_url,
                "group_size": cfg.group_size,
                "seed": cfg.seed,
                "on_result": on_result,
                "on_error": on_error,
                "backend": "gloo",
                "timeout": cfg.weight_sync_timeout,
            }
            if protocol == "trl":
                return VLLMServerEngine(trainer.task, **common)
            return SGLangEngine(trainer.task, weights="distributed", **common)

        trainer.engine_factory = factory
        try:
            yield server
        finally:
            trainer.engine_factory = None
