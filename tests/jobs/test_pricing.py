"""The price table and the offline token estimate behind costs, budgets and dry runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from surge.jobs._model import JobInputError
from surge.jobs.formats import estimate_input_tokens
from surge.jobs.pricing import Price, PriceTable


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.default()


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o-mini", Price(0.15, 0.60)),
        ("gpt-4o-mini-2024-07-18", Price(0.15, 0.60)),  # the longest prefix, not gpt-4o
        ("gpt-4o-2024-08-06", Price(2.50, 10.00)),
        ("gpt-4.1-nano-2025-04-14", Price(0.10, 0.40)),
        ("o3-mini", Price(1.10, 4.40)),
        ("text-embedding-3-large", Price(0.13, 0.0)),
        ("claude-3-5-haiku-20241022", Price(0.80, 4.00)),
        ("claude-sonnet-4-20250514", Price(3.00, 15.00)),
        ("claude-opus-4-1-20250805", Price(15.00, 75.00)),
        ("claude-opus-4-5-20251101", Price(5.00, 25.00)),
        ("claude-3-5-sonnet@20240620", Price(3.00, 15.00)),  # Vertex spelling
        ("openai/gpt-4o-mini", Price(0.15, 0.60)),  # a router's provider prefix
    ],
)
def test_lookup_exact_then_longest_prefix(table: PriceTable, model: str, expected: Price) -> None:
    assert table.lookup(model) == expected


@pytest.mark.parametrize("model", ["o10", "gpt-4omni", "llama-3-70b", "", "gpt"])
def test_unknown_models_have_no_price(table: PriceTable, model: str) -> None:
    assert table.lookup(model) is None
    assert table.cost(model, 1000, 1000) is None
    assert table.estimate(model, 1000, 1000) is None
    assert model not in table


def test_simulator_models_are_priced_so_the_demo_shows_costs(table: PriceTable) -> None:
    for model in ("sim-small", "sim-large", "sim-embed"):
        price = table.lookup(model)
        assert price is not None and price.input_per_million > 0
    assert table.lookup("sim-large").input_per_million > table.lookup("sim-small").input_per_million  # type: ignore[union-attr]


def test_cost_and_estimate(table: PriceTable) -> None:
    assert table.cost("gpt-4o-mini", 1_000_000, 1_000_000) == pytest.approx(0.75)
    assert table.cost("gpt-4o", 2_000, 500) == pytest.approx(0.005 + 0.005)
    assert table.cost("text-embedding-3-small", 50_000, 0) == pytest.approx(0.001)
    assert table.cost("gpt-4o", 0, 0) == 0.0
    # The estimate reserves every output token the request may use.
    assert table.estimate("gpt-4.1", 1_000, 256) == table.cost("gpt-4.1", 1_000, 256)


def write_prices(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "prices.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_a_price_file_overrides_and_extends_the_defaults(tmp_path: Path) -> None:
    path = write_prices(
        tmp_path,
        {"gpt-4o": {"input": 1.25, "output": 5}, "my-finetune": {"input": 0.3, "output": 1.2},
         "my-embedder": {"input": 0.01}},
    )  # fmt: skip
    table = PriceTable.from_file(path)
    assert table.lookup("gpt-4o-2024-08-06") == Price(1.25, 5.0)
    assert table.lookup("my-finetune") == Price(0.3, 1.2)
    assert table.lookup("my-embedder") == Price(0.01, 0.0)  # output left out: 0
    assert table.lookup("gpt-4o-mini") == Price(0.15, 0.60)  # the rest of the defaults stay
    # An override wins over a shorter default prefix too.
    table = PriceTable.from_file(write_prices(tmp_path, {"gpt-4o-mini-2024-07-18": {"input": 9, "output": 9}}))  # fmt: skip
    assert table.lookup("gpt-4o-mini-2024-07-18") == Price(9, 9)
    assert PriceTable.default().lookup("gpt-4o") == Price(2.50, 10.00)  # defaults untouched


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{not json", "the price table is not valid JSON"),
        ([1, 2], "must be a JSON object"),
        ({"m": 0.5}, "'m': expected {\"input\""),
        ({"m": {"output": 1}}, "'m': missing \"input\""),
        ({"m": {"input": -1, "output": 1}}, "'m': 'input' must be a non-negative number"),
        ({"m": {"input": 1, "output": "2"}}, "'m': 'output' must be a non-negative number"),
        ({"m": {"input": True}}, "'m': 'input' must be a non-negative number"),
        ({"m": {"input": 1, "outptu": 2}}, "'m': unknown key 'outptu'"),
    ],
)
def test_a_bad_price_file_names_the_file_and_the_entry(
    tmp_path: Path, data: Any, message: str
) -> None:
    path = write_prices(tmp_path, data)
    with pytest.raises(JobInputError) as caught:
        PriceTable.from_file(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_a_missing_price_file(tmp_path: Path) -> None:
    with pytest.raises(
        JobInputError, match=r"nope\.json: cannot read the price table: No such file"
    ):
        PriceTable.from_file(tmp_path / "nope.json")


# -- token estimates ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # ceil(12 / 4) = 3 for the text, 4 for the message, 3 for the reply primer
        ({"messages": [{"role": "user", "content": "Hello there!"}]}, 10),
        ({"messages": [{"role": "system", "content": "abcd"}, {"role": "user", "content": "abcde"}]}, 3 + 4 + 1 + 4 + 2),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "abcdefgh"}, {"type": "image_url", "image_url": {"url": "x"}}]}]}, 3 + 4 + 2 + 765),
        ({"system": "abcdefgh", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5}, 3 + 4 + 1 + 2),
        ({"input": "a" * 400}, 100),
        ({"input": ["abcd", "abcdefgh"]}, 3),
        ({"input": [1, 2, 3]}, 3),
        ({"input": [[1, 2], [3]]}, 3),
        ({"input": ""}, 1),
        ({}, 1),
    ],
)  # fmt: skip
def test_estimate_input_tokens(body: dict[str, Any], expected: int) -> None:
    assert estimate_input_tokens(body) == expected


def test_token_estimates_grow_with_the_text() -> None:
    short = estimate_input_tokens({"messages": [{"role": "user", "content": "word " * 10}]})
    long = estimate_input_tokens({"messages": [{"role": "user", "content": "word " * 1000}]})
    assert 1200 < long < 1300 and short < 30
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    with_tools = estimate_input_tokens({"messages": [{"role": "user", "content": "word " * 10}], "tools": tools})  # fmt: skip
    assert with_tools > short
