"""Offline token estimates for dry runs, TPM reservation and budget reservation.

Exact counts would need the provider's tokenizer (tiktoken downloads its tables on first
use, and Anthropic's is not public), and they matter little here: the limiter reserves
the estimate and then settles with the real usage the provider reports. So the rule is
the usual rule of thumb, about four characters per token, plus the few tokens of framing
that chat formats add per message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

# What surge sends as max_tokens to Anthropic when a request sets none (it is required
# there): so the most such a request can be billed for.
from surge.providers._anthropic import DEFAULT_MAX_TOKENS as ANTHROPIC_DEFAULT_MAX_TOKENS

CHARS_PER_TOKEN = 4
PER_MESSAGE = 4  # role and separators around each chat message
PER_REQUEST = 3  # the reply primer after the last message
PER_IMAGE = 765  # one 1024x1024 image at high detail, in OpenAI's accounting

#: Output tokens assumed, for `--max-cost` and the `--dry-run` ceiling, for an
#: OpenAI-style chat request that sets no `max_tokens`. The model may write more (its
#: own output cap is 16k to 128k tokens): this is a planning figure, not a cap. Set
#: `max_tokens` (`--param max_tokens=N`) for a ceiling the provider enforces.
ASSUMED_OUTPUT_TOKENS = 4096
_MAX_OUTPUT_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def _text_tokens(chars: int) -> int:
    return -(-chars // CHARS_PER_TOKEN)  # ceil without floats


def _content_tokens(content: Any) -> int:
    """A message's content: a string, or a list of parts (text, image, tool result...)."""
    if content is None:
        return 0
    if isinstance(content, str):
        return _text_tokens(len(content))
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, str):
                total += _text_tokens(len(part))
            elif isinstance(part, Mapping):
                kind = part.get("type")
                if isinstance(part.get("text"), str):
                    total += _text_tokens(len(part["text"]))
                elif kind in ("image_url", "image", "input_image"):
                    total += PER_IMAGE
                elif kind == "tool_result":
                    total += _content_tokens(part.get("content"))
                else:
                    total += _json_tokens(part)
            else:
                total += _json_tokens(part)
        return total
    return _json_tokens(content)


def _json_tokens(value: Any) -> int:
    return _text_tokens(len(json.dumps(value, ensure_ascii=False, default=str)))


def _embedding_tokens(value: Any) -> int:
    if isinstance(value, str):
        return _text_tokens(len(value))
    if isinstance(value, int):  # one token id
        return 1
    if isinstance(value, list):
        return sum(_embedding_tokens(item) for item in value)
    return 0


def estimate_input_tokens(body: Mapping[str, Any]) -> int:
    """Roughly how many input tokens a request body costs, without a tokenizer.

    Chat bodies (OpenAI chat completions or Anthropic messages): ceil(chars / 4) of each
    message's text, plus 4 per message and 3 per request; `system`, `tools` and
    function calls count by their JSON length; images count 765 each. Embedding bodies:
    ceil(chars / 4) per input string, 1 per token id. Never less than 1.

        >>> estimate_input_tokens({"messages": [{"role": "user", "content": "Hello there!"}]})
        10
        >>> estimate_input_tokens({"input": ["one", "two"]})
        2
    """
    if "messages" not in body and "input" in body:
        return max(1, _embedding_tokens(body["input"]))
    total = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        total += PER_REQUEST
        for message in messages:
            total += PER_MESSAGE
            if isinstance(message, Mapping):
                total += _content_tokens(message.get("content"))
                for key in ("tool_calls", "function_call"):
                    if key in message:
                        total += _json_tokens(message[key])
    system = body.get("system")  # Anthropic: a string or a list of text blocks
    if system is not None:
        total += _content_tokens(system)
    for key in ("tools", "functions", "response_format"):
        if key in body:
            total += _json_tokens(body[key])
    if "prompt" in body:  # legacy completions
        total += _embedding_tokens(body["prompt"])
    return max(1, total)


def is_embedding(body: Mapping[str, Any]) -> bool:
    return "messages" not in body and "input" in body


def max_output_tokens(body: Mapping[str, Any], *, provider: str) -> int | None:
    """The most output tokens a request can be billed for: its own `max_tokens` (or
    `max_completion_tokens`), what surge sends for it (Anthropic: 1,024), 0 for
    embeddings, or None when nothing caps it (an OpenAI-style chat request without
    `max_tokens`).

        >>> max_output_tokens({"messages": [], "max_tokens": 64}, provider="openai")
        64
        >>> max_output_tokens({"messages": []}, provider="anthropic")
        1024
        >>> max_output_tokens({"messages": []}, provider="openai") is None
        True
    """
    if is_embedding(body):
        return 0
    for key in _MAX_OUTPUT_KEYS:
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    if provider == "anthropic":
        return ANTHROPIC_DEFAULT_MAX_TOKENS
    return None
