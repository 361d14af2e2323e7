"""`surge sim`: run the simulator as a standalone server until Ctrl-C."""

from __future__ import annotations

import asyncio
import signal
from typing import Annotated, Any

import typer
from rich.console import Console

from surge.cli import app

_HELP = (
    "Serve an OpenAI- and Anthropic-compatible simulator with latency, limits and faults."
    "\n\n"
    "Point a client at http://HOST:PORT/v1 (OpenAI SDK base_url) or http://HOST:PORT "
    "(Anthropic SDK base_url). GET /sim/stats shows what it has seen; POST /sim/reset "
    "clears it."
)


@app.command("sim", help=_HELP)
def sim(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 picks a free one).")] = 8000,
    profile: Annotated[
        str,
        typer.Option(help="default, fast, typical, openai-tier1, anthropic-tier1, chaos, vllm."),
    ] = "default",
    rpm: Annotated[int | None, typer.Option(help="Requests per minute per API key.")] = None,
    tpm: Annotated[
        int | None, typer.Option(help="Tokens (input + max_tokens) per minute per key.")
    ] = None,
    itpm: Annotated[int | None, typer.Option(help="Input tokens per minute per key.")] = None,
    otpm: Annotated[int | None, typer.Option(help="max_tokens per minute per key.")] = None,
    burst_seconds: Annotated[
        float | None, typer.Option(help="Bucket size in seconds of rate (default 10).")
    ] = None,
    latency: Annotated[
        str | None,
        typer.Option(
            help="TTFT[,PER_TOKEN[,JITTER]] in seconds (replaces the profile's); 0 for none."
        ),
    ] = None,
    fail_5xx: Annotated[float | None, typer.Option(help="P(500/502/503), split evenly.")] = None,
    fail_hang: Annotated[
        float | None, typer.Option(help="P(no answer until the client gives up).")
    ] = None,
    fail_reset: Annotated[
        float | None, typer.Option(help="P(connection reset mid-response).")
    ] = None,
    fail_malformed: Annotated[
        float | None, typer.Option(help="P(200 with a truncated body).")
    ] = None,
    fail_slow: Annotated[float | None, typer.Option(help="P(body trickles out slowly).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for faults and latencies.")] = None,
    api_key: Annotated[
        list[str] | None, typer.Option(help="Require this API key (repeatable); others get 401.")
    ] = None,
    capacity: Annotated[
        int | None, typer.Option(help="Capacity mode: concurrent slots; latency grows with load.")
    ] = None,
    capacity_queue: Annotated[
        int | None, typer.Option(help="Capacity mode: 503 once this many requests wait.")
    ] = None,
    models: Annotated[
        list[str] | None,
        typer.Option(
            "--models",
            help="Models served (comma-separated or repeated); others get 404 "
            "model_not_found. Default: sim-small, sim-large, sim-embed and popular "
            "OpenAI/Anthropic names.",
        ),
    ] = None,
    any_model: Annotated[
        bool, typer.Option("--any-model", help="Accept any model name (no 404 for unknown ones).")
    ] = False,
    policy: Annotated[
        str | None,
        typer.Option(
            "--policy",
            help="Also serve a real torch policy behind the trl vllm-serve and SGLang "
            "endpoints surge.rl speaks: 'tiny' (the rl demo's TinyLM; needs torch).",
        ),
    ] = None,
) -> None:
    from surge.sim import PROFILES, Faults, Latency, serve
    from surge.sim.server import new_event_loop

    if profile not in PROFILES:
        raise typer.BadParameter(
            f"unknown profile; one of {', '.join(PROFILES)}", param_hint="--profile"
        )
    base = PROFILES[profile]
    changes: dict[str, Any] = {}
    for name, value in (
        ("rpm", rpm),
        ("tpm", tpm),
        ("itpm", itpm),
        ("otpm", otpm),
        ("capacity_queue", capacity_queue),
        ("burst_seconds", burst_seconds),
        ("seed", seed),
        ("capacity", capacity),
    ):
        if value is not None:
            changes[name] = value
    if api_key:
        changes["api_keys"] = frozenset(api_key)
    if models:
        names = tuple(name.strip() for text in models for name in text.split(",") if name.strip())
        if not names:
            raise typer.BadParameter(
                "no model names. HINT: --models sim-small,gpt-4o-mini", param_hint="--models"
            )
        changes["models"] = names
    changes["any_model"] = any_model
    if latency is not None:
        try:
            changes["latency"] = Latency.parse(latency)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--latency") from None
    faults: dict[str, float] = {}
    if fail_5xx is not None:
        third = Faults.uniform_5xx(fail_5xx)
        faults.update(
            error_500=third.error_500, error_502=third.error_502, error_503=third.error_503
        )
    for name, value in (
        ("hang", fail_hang),
        ("reset", fail_reset),
        ("malformed", fail_malformed),
        ("slow", fail_slow),
    ):
        if value is not None:
            faults[name] = value
    if faults:
        changes["faults"] = faults
    try:
        config = base.replace(**changes)
    except (ValueError, TypeError) as exc:
        raise typer.BadParameter(str(exc)) from None

    console = Console(stderr=True)
    host_policy: Any = None
    if policy is not None:
        if policy != "tiny":
            raise typer.BadParameter("the one policy on offer is 'tiny'", param_hint="--policy")
        try:
            from surge.sim._policy import PolicyHost, tiny_policy
        except ImportError:
            raise typer.BadParameter(
                "--policy needs torch. HINT: pip install 'surge[rl]'", param_hint="--policy"
            ) from None
        model, eos = tiny_policy()
        host_policy = PolicyHost(model, eos_id=eos)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with serve(config, host=host, port=port, policy=host_policy) as server:
            limits = (
                ", ".join(
                    f"{n}={v}"
                    for n, v in (
                        ("rpm", config.rpm),
                        ("tpm", config.tpm),
                        ("itpm", config.itpm),
                        ("otpm", config.otpm),
                    )
                    if v is not None
                )
                or "none"
            )
            console.print(
                f"[bold]surge sim[/] profile={profile} limits: {limits} seed={config.seed}"
            )
            served = "any" if config.any_model else _short_list(config.models)
            console.print(f"  models: {served}", highlight=False)
            console.print(f"  OpenAI base_url:    [cyan]{server.url}[/]")
            console.print(f"  Anthropic base_url: [cyan]{server.base_url}[/]")
            if host_policy is not None:
                console.print(
                    f"  policy: {policy} at [cyan]{server.base_url}[/] (trl vllm-serve: "
                    "/generate/, /update_named_param/...; SGLang: /generate, "
                    "/update_weights_from_disk...)"
                )
            console.print(f"  stats: {server.base_url}/sim/stats   (Ctrl-C to stop)")
            await stop.wait()
        console.print("surge sim stopped.")

    loop = new_event_loop()
    try:
        loop.run_until_complete(run())
    finally:
        loop.close()


def _short_list(names: tuple[str, ...], shown: int = 6) -> str:
    if len(names) <= shown:
        return ", ".join(names)
    return ", ".join(names[:shown]) + f" and {len(names) - shown} more (GET /v1/models)"
