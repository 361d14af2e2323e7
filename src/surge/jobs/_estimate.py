"""What requests may cost before any is sent: the `--max-cost` reservation and the
`--dry-run` range.

A request's ceiling is its estimated input plus every output token it may be billed
for: its own max_tokens, the 1,024 surge sends Anthropic when it sets none, or, for an
OpenAI-style chat request nothing caps, `ASSUMED_OUTPUT_TOKENS` (a planning figure,
not a cap). Its floor is the input alone.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from surge.jobs._model import JobInputError
from surge.jobs.journal import Journal, PendingItem
from surge.jobs.pricing import PriceTable
from surge.jobs.tokens import ASSUMED_OUTPUT_TOKENS, estimate_input_tokens, max_output_tokens


@dataclass(frozen=True)
class CostEstimate:
    """What a dry run expects the pending requests to cost.

    The floor counts the estimated input tokens alone (every reply empty); the ceiling
    adds every output token each request may be billed for (`uncapped` requests set no
    max_tokens and count `ASSUMED_OUTPUT_TOKENS`). Costs are None when some model has
    no known price (`unpriced_models`).
    """

    requests: int
    input_tokens: int
    output_tokens: int
    uncapped: int
    cost_floor: float | None
    cost_ceiling: float | None
    unpriced_models: tuple[str, ...] = ()


def cost_range(
    prices: PriceTable, body: Mapping[str, Any], *, provider: str
) -> tuple[float, float] | None:
    """(floor, ceiling) in USD for one request; None for a model with no known price.

    >>> question = {"role": "user", "content": "x" * 400}  # 107 tokens with the framing
    >>> body = {"model": "gpt-4o-mini", "messages": [question], "max_tokens": 1000}
    >>> [round(usd, 8) for usd in cost_range(PriceTable.default(), body, provider="openai")]
    [1.605e-05, 0.00061605]
    """
    model = str(body.get("model", ""))
    inputs = estimate_input_tokens(body)
    outputs = max_output_tokens(body, provider=provider)
    floor = prices.cost(model, inputs, 0)
    ceiling = prices.estimate(model, inputs, ASSUMED_OUTPUT_TOKENS if outputs is None else outputs)
    return None if floor is None or ceiling is None else (floor, ceiling)


def estimate_pending(
    items: Iterable[PendingItem], prices: PriceTable, *, provider: str
) -> CostEstimate:
    """Add up the tokens and the cost range of `items`."""
    requests = input_tokens = output_tokens = uncapped = 0
    floor = ceiling = 0.0
    unpriced: set[str] = set()
    for item in items:
        requests += 1
        input_tokens += estimate_input_tokens(item.body)
        cap = max_output_tokens(item.body, provider=provider)
        uncapped += cap is None
        output_tokens += ASSUMED_OUTPUT_TOKENS if cap is None else cap
        cost = cost_range(prices, item.body, provider=provider)
        if cost is None:
            unpriced.add(str(item.body.get("model", "")))
        else:
            floor += cost[0]
            ceiling += cost[1]
    return CostEstimate(
        requests, input_tokens, output_tokens, uncapped,
        None if unpriced else floor, None if unpriced else ceiling, tuple(sorted(unpriced)),
    )  # fmt: skip


def scratch_journal(path: Path, folder: Path) -> Journal:
    """For a dry run, which writes nothing beside the job: a copy of the job's journal
    (empty for a new job) in a throwaway folder, so the estimate covers exactly what a
    real run would send, and a changed input is refused just the same."""
    copy = folder / "journal"
    if path.exists():
        try:
            source = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
            target = sqlite3.connect(copy)
            try:
                source.backup(target)
            finally:
                source.close()
                target.close()
        except sqlite3.Error as exc:
            raise JobInputError(
                f"cannot read journal {path} for the dry run: {exc}. HINT: run `surge status` "
                "on the job to see what is wrong with it."
            ) from exc
    return Journal(copy)
