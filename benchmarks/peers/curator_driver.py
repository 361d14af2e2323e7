"""bespokelabs-curator against a surge simulator, for benchmarks/rate_limit.py.

Run with the curator venv's python (see setup.sh), never surge's:

    .peers/curator-venv/bin/python benchmarks/peers/curator_driver.py \
        --base-url http://127.0.0.1:PORT/v1 --requests 400 --rpm 600 --tpm 100000

Curator is configured as its docs show for an OpenAI-compatible server whose limits
the user knows: backend "openai" with ``base_url``, ``api_key``,
``max_requests_per_minute`` and ``max_tokens_per_minute``; everything else (retries,
the pause after a 429, concurrency) is left at curator's defaults. Its cache goes to a
temporary folder and is disabled, telemetry and the rich display are off, and
tiktoken reads the encodings litellm ships (no network here).

With ``--base-url -`` the driver imports everything, prints ``ready`` and then reads
the base URL from stdin, so the parent can start its clock after the imports (about
10 s of them). Prints one JSON line: ``{"ok": n_ok, ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

MAX_TOKENS = 100


def quiet_offline_env(cache_dir: str) -> None:
    """Environment curator reads at import: no telemetry, no cache, no network."""
    os.environ["TELEMETRY_ENABLED"] = "false"
    os.environ["CURATOR_DISABLE_CACHE"] = "true"
    os.environ["CURATOR_CACHE_DIR"] = cache_dir
    os.environ["CURATOR_DISABLE_RICH_DISPLAY"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_CACHE"] = os.path.join(cache_dir, "hf")
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    os.environ.setdefault("POSTHOG_DISABLED", "1")
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", bundled_tiktoken_dir())


def bundled_tiktoken_dir() -> str:
    """litellm ships cl100k_base, p50k_base and o200k_base under tiktoken's cache names.

    litellm points TIKTOKEN_CACHE_DIR there only once its default_encoding module is
    imported, which curator's token counting can precede; so point it there first.
    """
    from importlib import resources

    return str(resources.files("litellm").joinpath("litellm_core_utils/tokenizers"))


def prompt_text(i: int) -> str:
    return f"Request {i}: write one line about the sea."


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="curator-bench-") as cache_dir:
        quiet_offline_env(cache_dir)
        from bespokelabs import curator

        base_url = args.base_url
        if base_url == "-":  # imports done: the parent may start its clock now
            print("ready", flush=True)
            base_url = sys.stdin.readline().strip()

        class Sea(curator.LLM):
            def prompt(self, input: dict[str, Any]) -> str:
                return str(input["text"])

            def parse(self, input: dict[str, Any], response: str) -> dict[str, Any]:
                return {"i": input["i"], "reply": response}

        llm = Sea(
            model_name="sim-small",
            backend="openai",
            generation_params={"max_tokens": MAX_TOKENS},
            backend_params={
                "base_url": base_url,
                "api_key": args.api_key,
                "max_requests_per_minute": args.rpm,
                "max_tokens_per_minute": args.tpm,
                "require_all_responses": False,
            },
        )
        rows = [{"i": i, "text": prompt_text(i)} for i in range(args.requests)]
        start = time.monotonic()
        response = llm(rows, working_dir=cache_dir)
        wall = time.monotonic() - start
        ok = len(response.dataset)
    return {"ok": ok, "wall": round(wall, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-url", required=True, help="the simulator's /v1 URL, or - for stdin")
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--rpm", type=int, required=True)
    parser.add_argument("--tpm", type=int, required=True)
    parser.add_argument("--api-key", default="sk-anything")
    result = run(parser.parse_args())
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
