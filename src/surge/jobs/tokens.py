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

CHARS_PER_TOKEN = 4
PER_MESSAGE = 4  # role and separators around each chat message
PER_REQUEST = 3  # the reply primer after the last message
PER_IMAGE = 765  # one 1024x1024 image at high detail, in OpenAI's accounting


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
