"""Arithmetic word problems in the GSM8k answer format, generated from a seed.

A reasoning task that ships with surge: small enough for a tiny model to learn on a CPU,
shaped like the real thing (a question in words, a completion that ends ``#### 42``, a
reward that extracts the final answer), so the same config trains on GSM8k itself by
pointing ``dataset`` at a JSONL or Parquet file with ``prompt`` and ``answer`` columns.

The reward follows the format + correctness recipe of GSM8k RL setups (TRL's examples,
DeepSeek-R1's rule-based rewards): :data:`FORMAT_REWARD` for a well-formed ``#### <n>``,
1.0 for the right number, 0 otherwise.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "FORMAT_REWARD",
    "extract_answer",
    "gsm8k_reward",
    "word_problems",
]

FORMAT_REWARD = 0.1
"""Reward of a well-formed but wrong final answer."""

# The final answer of GSM8k: "#### " then a number (commas and a sign allowed).
_MARKER = "####"
_ANSWER = re.compile(r"####\s*(-?[\d,]*\.?\d+)\s*$")

_NAMES = ("Ann", "Ben", "Cat", "Dan", "Eve", "Finn", "Gus", "Ivy", "Jo", "Kim", "Leo", "Mia")
_ITEMS = ("apples", "books", "coins", "pens", "cards", "eggs", "shells", "stamps")

Make = Callable[[random.Random, int], tuple[str, int]]


def _add(rng: random.Random, top: int) -> tuple[str, int]:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    a, b = rng.randint(0, top), rng.randint(0, top)
    return f"{name} has {a} {item} and gets {b} more. How many {item} now?", a + b


def _sub(rng: random.Random, top: int) -> tuple[str, int]:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    a = rng.randint(0, top)
    b = rng.randint(0, a)
    return f"{name} has {a} {item} and gives away {b}. How many {item} are left?", a - b


def _mul(rng: random.Random, top: int) -> tuple[str, int]:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    a, b = rng.randint(1, top), rng.randint(1, top)
    return f"{name} buys {a} boxes of {b} {item}. How many {item} in all?", a * b


_KINDS: dict[str, Make] = {"add": _add, "sub": _sub, "mul": _mul}


def word_problems(
    n: int,
    *,
    seed: int = 0,
    max_operand: int = 9,
    kinds: Sequence[str] = ("add", "sub"),
    exclude: Sequence[dict[str, Any]] = (),
) -> list[dict[str, Any]]:
    """``n`` distinct problems as rows ``{"prompt", "answer"}``, drawn from ``seed``.

    ``exclude`` holds rows whose prompts must not appear (the train split, when drawing
    the held-out one), so held-out accuracy measures problems the policy never trained on.

    Example::

        train = word_problems(2000, seed=0)
        held_out = word_problems(200, seed=1, exclude=train)
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if max_operand < 1:
        raise ValueError(f"max_operand must be >= 1, got {max_operand}")
    unknown = [k for k in kinds if k not in _KINDS]
    if unknown or not kinds:
        raise ValueError(
            f"unknown kinds {unknown or list(kinds)}. HINT: pick from {sorted(_KINDS)}."
        )
    rng = random.Random(seed)
    seen = {row["prompt"] for row in exclude}
    rows: list[dict[str, Any]] = []
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(
                f"could not draw {n} distinct problems (got {len(rows)}). HINT: raise "
                "max_operand or add kinds: there are not that many different problems."
            )
        prompt, answer = _KINDS[rng.choice(list(kinds))](rng, max_operand)
        if prompt in seen:
            continue
        seen.add(prompt)
        rows.append({"prompt": prompt, "answer": str(answer)})
    return rows


def extract_answer(completion: str) -> str | None:
    """The number after the last ``####`` (commas dropped), or None when the completion
    has no ``####`` or no number right after it (malformed)."""
    at = completion.rfind(_MARKER)
    if at < 0:
        return None
    match = _ANSWER.match(completion[at:].strip())
    if match is None:
        return None
    return match.group(1).replace(",", "")


def _same_number(a: str, b: str) -> bool:
    try:
        return float(a) == float(b.replace(",", ""))
    except ValueError:
        return a == b


def gsm8k_reward(prompt: Any, completion: str, *, answer: Any, **row: Any) -> float:
    """1.0 for the right final answer after ``####``; :data:`FORMAT_REWARD` for a
    well-formed wrong one; 0.0 when ``####`` is missing or not followed by a number.

    ``answer`` is the dataset's answer column: the number itself, or a GSM8k solution
    ending in ``#### <n>``.
    """
    del prompt, row
    got = extract_answer(completion)
    if got is None:
        return 0.0
    want = str(answer)
    if _MARKER in want:
        want = extract_answer(want) or want
    return 1.0 if _same_number(got, want.strip()) else FORMAT_REWARD
