"""The documented, deterministic functions of a request that the simulator answers with.

Clients import these to predict exactly what the server will charge and reply:

- ``count_tokens(body)``: input tokens = Σ ceil(len(text) / 4) over every text piece of
  the request (each message's string content or each ``text`` part of list content,
  Anthropic's ``system``, each embedding input string; a pre-tokenised input counts
  its length).
- ``request_cost(body)``: tokens charged against TPM = input tokens + max_tokens for a
  chat/messages request (``max_completion_tokens``, else ``max_tokens``, else
  ``DEFAULT_MAX_TOKENS``), input tokens alone for embeddings.
- ``content_key(body)``: first 16 hex digits of SHA-256 over the canonical JSON
  (sorted keys, no spaces) of ``[system, messages, input]`` (absent = null). Stats,
  faults and replies are keyed by it.
- ``expected_reply(body)``: the reply's words are ``sim-<key[:8]>`` followed by words
  from ``VOCAB`` picked by the bytes of SHA-256(key + ":" + block), L words in all
  where L = lo + int(key, 16) % (hi - lo + 1) for ``reply_tokens=(lo, hi)``. Each word
  is one output token; the reply keeps the first min(L, max_tokens) words and its
  finish reason is "length" when that cut it short. The first word names the input, so
  even a one-token reply shows which request it answers.
- ``embedding_vector(text, dim)``: SHAKE-256 of the UTF-8 text, read as ``dim``
  little-endian int16, shifted by 0.5 and scaled to unit length.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass
from typing import Any, Literal

from surge.sim.config import DEFAULT_MAX_TOKENS

__all__ = [
    "VOCAB",
    "Reply",
    "content_key",
    "count_tokens",
    "embedding_vector",
    "expected_reply",
    "max_tokens_of",
    "natural_length",
    "reply_for_key",
    "request_cost",
]

VOCAB: tuple[str, ...] = tuple(
    [
        "alpha",
        "bravo",
        "charlie",
        "delta",
        "echo",
        "foxtrot",
        "golf",
        "hotel",
        "india",
        "juliet",
        "kilo",
        "lima",
        "mike",
        "november",
        "oscar",
        "papa",
        "quebec",
        "romeo",
        "sierra",
        "tango",
        "uniform",
        "victor",
        "whiskey",
        "xray",
        "yankee",
        "zulu",
        "amber",
        "basil",
        "cedar",
        "dune",
        "ember",
        "fern",
        "grove",
        "harbor",
        "iris",
        "jade",
        "kelp",
        "lotus",
        "maple",
        "nectar",
        "onyx",
        "pearl",
        "quartz",
        "river",
        "sage",
        "thistle",
        "umber",
        "violet",
        "willow",
        "yarrow",
        "zephyr",
        "apple",
        "brook",
        "cloud",
        "drift",
        "flint",
        "glade",
        "heath",
        "isle",
        "lark",
        "marsh",
        "north",
        "ocean",
        "prism",
    ]
)
assert len(VOCAB) == 64  # one word per 6 bits, so a digest byte picks a word evenly


def _text_tokens(text: str) -> int:
    return (len(text) + 3) // 4


def _content_texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    texts: list[str] = []
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part, str):
                texts.append(part)
    return texts


def _texts(body: dict[str, Any]) -> tuple[list[str], int]:
    """Every text piece of a request, and the count of pre-tokenised tokens."""
    texts = _content_texts(body.get("system"))
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                texts.extend(_content_texts(message.get("content")))
    raw_tokens = 0
    inputs = body.get("input")
    if isinstance(inputs, str):
        texts.append(inputs)
    elif isinstance(inputs, list):
        if inputs and all(isinstance(x, int) for x in inputs):
            raw_tokens += len(inputs)
        else:
            for item in inputs:
                if isinstance(item, str):
                    texts.append(item)
                elif isinstance(item, list):
                    raw_tokens += len(item)
    return texts, raw_tokens


def count_tokens(body: dict[str, Any]) -> int:
    """Input tokens of a request body, as the simulator counts them.

    Example:
        >>> count_tokens({"messages": [{"role": "user", "content": "Hello there"}]})
        3
    """
    texts, raw = _texts(body)
    return sum(_text_tokens(t) for t in texts) + raw


def max_tokens_of(body: dict[str, Any], default: int = DEFAULT_MAX_TOKENS) -> int:
    """The output budget of a chat/messages request.

    Example:
        >>> max_tokens_of({"max_tokens": 5}), max_tokens_of({})
        (5, 256)
    """
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return max(value, 0)
    return default


def request_cost(body: dict[str, Any], default_max_tokens: int = DEFAULT_MAX_TOKENS) -> int:
    """Tokens a request is charged against the TPM bucket.

    Example:
        >>> request_cost({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 10})
        11
        >>> request_cost({"input": ["abcd", "abcdefgh"]})
        3
    """
    if "messages" not in body and "input" in body:
        return count_tokens(body)
    return count_tokens(body) + max_tokens_of(body, default_max_tokens)


def content_key(body: dict[str, Any]) -> str:
    """The hash that identifies what a request asks, whatever its other options.

    Example:
        >>> content_key({"messages": [{"role": "user", "content": "Hi"}]})
        '3d1a3293d6cfc02d'
    """
    canonical = json.dumps(
        [body.get("system"), body.get("messages"), body.get("input")],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Reply:
    """What the simulator answers: ``words`` are the output tokens."""

    words: tuple[str, ...]
    finish_reason: Literal["stop", "length"]

    @property
    def text(self) -> str:
        return " ".join(self.words)

    @property
    def output_tokens(self) -> int:
        return len(self.words)

    @property
    def anthropic_stop_reason(self) -> str:
        return "end_turn" if self.finish_reason == "stop" else "max_tokens"


def _words(key: str, length: int) -> tuple[str, ...]:
    words = [f"sim-{key[:8]}"]
    block = 0
    while len(words) < length:
        digest = hashlib.sha256(f"{key}:{block}".encode()).digest()
        words.extend(VOCAB[b & 63] for b in digest[: length - len(words)])
        block += 1
    return tuple(words[:length])


def natural_length(key: str, reply_tokens: tuple[int, int] = (10, 40)) -> int:
    """Words in the untruncated reply for content ``key``."""
    lo, hi = reply_tokens
    return lo + int(key, 16) % (hi - lo + 1)


def expected_reply(
    body: dict[str, Any],
    *,
    reply_tokens: tuple[int, int] = (10, 40),
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
) -> Reply:
    """The reply the simulator gives to ``body`` (pass the server's ``reply_tokens``).

    Example:
        >>> body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
        >>> r = expected_reply(body)
        >>> r.text, r.finish_reason
        ('sim-3d1a3293 sierra yarrow', 'length')
    """
    return reply_for_key(content_key(body), max_tokens_of(body, default_max_tokens), reply_tokens)


def reply_for_key(key: str, limit: int, reply_tokens: tuple[int, int] = (10, 40)) -> Reply:
    """The reply for content ``key`` under an output budget of ``limit`` tokens."""
    length = natural_length(key, reply_tokens)
    if limit < length:
        return Reply(_words(key, limit), "length")
    return Reply(_words(key, length), "stop")


def embedding_vector(text: str, dim: int = 256) -> list[float]:
    """The unit vector the simulator returns for one embedding input.

    Example:
        >>> v = embedding_vector("hello", 8)
        >>> round(sum(x * x for x in v), 9)
        1.0
    """
    raw = struct.unpack(f"<{dim}h", hashlib.shake_256(text.encode()).digest(2 * dim))
    values = [x + 0.5 for x in raw]
    scale = 1.0 / math.hypot(*values)
    return [x * scale for x in values]
