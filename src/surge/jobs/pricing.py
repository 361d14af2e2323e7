"""What a request costs: a small table of list prices, overridable from a JSON file.

The table is for accounting and for `--max-cost` / `--dry-run`; the provider's invoice
is the truth. Prices are USD per million tokens, input and output; embedding models
charge for input only. Cached-input discounts and batch-API discounts are not modelled.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from surge.jobs._model import JobInputError


@dataclass(frozen=True)
class Price:
    """USD per million tokens.

    >>> Price(0.15, 0.60).input_per_million
    0.15
    """

    input_per_million: float
    output_per_million: float


# List prices (standard tier, pay-as-you-go, no batch or cache discount) as published by
# OpenAI and Anthropic, as of 2025-11. They change: pass --prices FILE to override.
_DEFAULTS: dict[str, tuple[float, float]] = {
    # OpenAI chat
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-3.5-turbo": (0.50, 1.50),
    "o1": (15.00, 60.00),
    "o1-pro": (150.00, 600.00),
    "o1-mini": (1.10, 4.40),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
    # OpenAI embeddings (input only)
    "text-embedding-3-small": (0.02, 0.0),
    "text-embedding-3-large": (0.13, 0.0),
    "text-embedding-ada-002": (0.10, 0.0),
    # Anthropic
    "claude-3-haiku": (0.25, 1.25),
    "claude-3-5-haiku": (0.80, 4.00),
    "claude-3-5-sonnet": (3.00, 15.00),
    "claude-3-7-sonnet": (3.00, 15.00),
    "claude-sonnet-4": (3.00, 15.00),  # also claude-sonnet-4-5-*
    "claude-3-opus": (15.00, 75.00),
    "claude-opus-4": (15.00, 75.00),  # also claude-opus-4-1-*
    "claude-opus-4-5": (5.00, 25.00),
    # surge's simulator: made-up prices, non-zero so that `surge demo` and the tests
    # show costs being counted. No real provider serves these names.
    "sim-small": (0.10, 0.40),
    "sim-large": (2.00, 8.00),
    "sim-embed": (0.02, 0.0),
}

# A prefix only matches at a word boundary: "gpt-4o" prices "gpt-4o-2024-08-06" but
# "o1" does not price "o10".
_BOUNDARY = re.compile(r"[^A-Za-z0-9]")


class PriceTable:
    """Model name -> Price, with dated and suffixed names found by their base name.

    >>> table = PriceTable.default()
    >>> table.lookup("gpt-4o-mini-2024-07-18")
    Price(input_per_million=0.15, output_per_million=0.6)
    >>> round(table.cost("gpt-4o-mini", 1_000_000, 500_000), 4)
    0.45
    """

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self._prices = dict(prices)
        # Longest first, so the first prefix that matches is the most specific.
        self._by_length = sorted(self._prices, key=len, reverse=True)

    @classmethod
    def default(cls) -> PriceTable:
        """The built-in list prices."""
        return cls({name: Price(i, o) for name, (i, o) in _DEFAULTS.items()})

    @classmethod
    def from_file(cls, path: str | Path) -> PriceTable:
        """The defaults with the entries of a JSON file laid over them.

        The file maps model names to USD per million tokens; "output" may be left out
        for embedding models:

            {"my-finetune": {"input": 0.3, "output": 1.2}, "gpt-4o": {"input": 1.25, "output": 5}}

        Raises JobInputError naming the file (and the entry) when it cannot be used.
        """
        try:
            raw = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise JobInputError(
                f"{path}: cannot read the price table: {exc.strerror or exc}"
            ) from exc
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise JobInputError(
                f"{path}: the price table is not valid JSON: {exc.msg} (line {exc.lineno}, "
                f'column {exc.colno}). HINT: write {{"model": {{"input": 0.15, "output": 0.6}}}}'
            ) from exc
        if not isinstance(data, dict):
            raise JobInputError(
                f"{path}: the price table must be a JSON object mapping model names to "
                '{"input": USD per 1M tokens, "output": USD per 1M tokens}'
            )
        prices = dict(cls.default()._prices)
        for model, entry in data.items():
            prices[model] = _parse_entry(path, model, entry)
        return cls(prices)

    def lookup(self, model: str) -> Price | None:
        """The price of `model`: an exact entry, else the longest entry that is a prefix
        of it ending at a word boundary ("gpt-4o-mini-2024-07-18" -> "gpt-4o-mini").
        A routing prefix such as "openai/" is ignored. None when nothing matches."""
        found = self._match(model)
        if found is None and "/" in model:
            found = self._match(model.rsplit("/", 1)[1])
        return found

    def _match(self, model: str) -> Price | None:
        price = self._prices.get(model)
        if price is not None:
            return price
        for name in self._by_length:
            if (
                len(model) > len(name)
                and model.startswith(name)
                and _BOUNDARY.match(model, len(name))
            ):
                return self._prices[name]
        return None

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> float | None:
        """USD for a finished request, or None for a model the table does not know.

        >>> PriceTable.default().cost("text-embedding-3-small", 1_000_000, 0)
        0.02
        """
        price = self.lookup(model)
        if price is None:
            return None
        return (
            input_tokens * price.input_per_million + output_tokens * price.output_per_million
        ) / 1_000_000

    def estimate(self, model: str, input_tokens: int, max_output_tokens: int) -> float | None:
        """The most a request may cost, to reserve against a budget before sending it:
        its estimated input plus every output token it is allowed. None when unknown."""
        return self.cost(model, input_tokens, max_output_tokens)

    def __contains__(self, model: object) -> bool:
        return isinstance(model, str) and self.lookup(model) is not None

    def __repr__(self) -> str:
        return f"PriceTable({len(self._prices)} models)"


def _parse_entry(path: str | Path, model: Any, entry: Any) -> Price:
    where = f"{path}: {model!r}"
    if not isinstance(entry, dict):
        raise JobInputError(
            f'{where}: expected {{"input": USD per 1M tokens, "output": USD per 1M tokens}}, '
            f"got {json.dumps(entry)}"
        )
    unknown = sorted(set(entry) - {"input", "output"})
    if unknown:
        raise JobInputError(
            f'{where}: unknown key {unknown[0]!r}; an entry has "input" and "output" '
            "(USD per 1M tokens)"
        )
    values: dict[str, float] = {}
    for key in ("input", "output"):
        value = entry.get(key, 0.0 if key == "output" else None)
        if value is None:
            raise JobInputError(f'{where}: missing "input" (USD per 1M input tokens)')
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < 0
        ):
            raise JobInputError(
                f"{where}: {key!r} must be a non-negative number of USD per 1M tokens, "
                f"got {json.dumps(value)}"
            )
        values[key] = float(value)
    return Price(values["input"], values["output"])
