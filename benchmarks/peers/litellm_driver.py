"""LiteLLM's Router against a surge simulator, for benchmarks/rate_limit.py.

Run with the litellm venv's python (see setup.sh), never surge's:

    .peers/litellm-venv/bin/python benchmarks/peers/litellm_driver.py \
        --base-url http://127.0.0.1:PORT/v1 --requests 400 --rpm 600 --tpm 100000

The Router is set up as LiteLLM's docs show for a deployment whose limits are known
(their "Multi-Instance TPM/RPM" load test): one deployment with ``api_base``,
``rpm`` and ``tpm`` in its ``litellm_params``, ``enable_pre_call_checks=True`` (which
holds a deployment back once its rpm for the current minute is used) and the default
``simple-shuffle`` strategy, plus ``num_retries=10`` so that refused calls are tried
again (with 5, a third of 300 requests failed with "no deployments available").
``--routing-strategy usage-based-routing-v2`` picks the strategy LiteLLM's routing docs
call rate-limit aware. Every request goes through ``router.acompletion`` under one
``asyncio.gather``.

With ``--redis-host``/``--redis-port`` the Router counts its deployment's usage in
Redis (LiteLLM's ``redis_host``/``redis_port`` Router arguments, as in its
"Multi-Instance TPM/RPM" docs), so several driver processes share one rpm/tpm;
``--offset`` numbers this process's prompts after the others' (for
benchmarks/scale_out.py, which starts several).

With ``--base-url -`` the driver imports everything, prints ``ready`` and then reads
the base URL from stdin, so the parent can start its clock after the imports.
Offline: the model cost map is the local copy and tiktoken reads the encodings litellm
ships. Prints one JSON line: ``{"ok": n_ok, ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from typing import Any

MAX_TOKENS = 100
NUM_RETRIES = 10


def quiet_offline_env() -> None:
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    os.environ["LITELLM_TELEMETRY"] = "False"
    os.environ.setdefault("LITELLM_LOG", "CRITICAL")


def prompt_text(i: int) -> str:
    return f"Request {i}: write one line about the sea."


async def run(router: Any, n: int, offset: int = 0) -> dict[str, Any]:
    async def one(i: int) -> str:
        try:
            await router.acompletion(
                model="sim-small",
                messages=[{"role": "user", "content": prompt_text(offset + i)}],
                max_tokens=MAX_TOKENS,
            )
        except Exception as exc:  # one failed call must not sink the others
            return type(exc).__name__
        return "ok"

    start = time.monotonic()
    outcomes = Counter(await asyncio.gather(*(one(i) for i in range(n))))
    wall = time.monotonic() - start
    ok = outcomes.pop("ok", 0)
    return {"ok": ok, "wall": round(wall, 2), "errors": dict(outcomes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-url", required=True, help="the simulator's /v1 URL, or - for stdin")
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--rpm", type=int, required=True)
    parser.add_argument("--tpm", type=int, required=True)
    parser.add_argument("--api-key", default="sk-anything")
    parser.add_argument("--num-retries", type=int, default=NUM_RETRIES)
    parser.add_argument("--routing-strategy", default="simple-shuffle")
    parser.add_argument("--pre-call-checks", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--redis-host", default=None, help="share usage through this Redis")
    parser.add_argument("--redis-port", type=int, default=None)
    parser.add_argument("--offset", type=int, default=0, help="number of the first prompt")
    args = parser.parse_args()

    quiet_offline_env()
    import litellm
    from litellm import Router

    litellm.telemetry = False
    litellm.suppress_debug_info = True

    base_url = args.base_url
    if base_url == "-":
        print("ready", flush=True)
        base_url = sys.stdin.readline().strip()

    shared: dict[str, Any] = {}
    if args.redis_host is not None:
        shared = {"redis_host": args.redis_host, "redis_port": args.redis_port}
    router = Router(
        model_list=[
            {
                "model_name": "sim-small",
                "litellm_params": {
                    "model": "openai/sim-small",
                    "api_base": base_url,
                    "api_key": args.api_key,
                    "rpm": args.rpm,
                    "tpm": args.tpm,
                },
            }
        ],
        num_retries=args.num_retries,
        enable_pre_call_checks=args.pre_call_checks,
        routing_strategy=args.routing_strategy,
        **shared,
    )
    result = asyncio.run(run(router, args.requests, args.offset))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
