"""Anthropic's Messages API. Chat-completions requests are translated on the way in."""

from __future__ import annotations

from typing import Any

from surge._exceptions import BadRequestError
from surge._feedback import Reply
from surge.providers._base import HTTPProvider, ProviderResponse

DEFAULT_BASE_URL = "https://api.anthropic.com/v1"
API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024


class AnthropicProvider(HTTPProvider):
    name = "anthropic"

    def __init__(
        self, *, base_url: str | None, api_key: str | None, max_connections: int = 100
    ) -> None:
        headers = {"anthropic-version": API_VERSION}
        if api_key:
            headers["x-api-key"] = api_key
        super().__init__(
            base_url=base_url or DEFAULT_BASE_URL,
            headers=headers,
            api_key=api_key,
            max_connections=max_connections,
        )

    async def send(self, url: str, body: dict[str, Any]) -> Reply[ProviderResponse]:
        if url.endswith("/embeddings"):
            raise BadRequestError(
                "Anthropic has no embeddings endpoint; use --provider openai or local"
            )
        if url.endswith("/chat/completions"):
            body = chat_to_messages(body)
        return await self.post("messages", body)


def chat_to_messages(body: dict[str, Any]) -> dict[str, Any]:
    """A chat-completions body as a Messages body: system prompts lifted out,
    max_tokens made explicit (Anthropic requires it)."""
    system = [m["content"] for m in body.get("messages", []) if m.get("role") == "system"]
    out = {k: v for k, v in body.items() if k not in ("messages", "n", "stream_options")}
    out["messages"] = [m for m in body.get("messages", []) if m.get("role") != "system"]
    out.setdefault("max_tokens", body.get("max_completion_tokens", DEFAULT_MAX_TOKENS))
    out.pop("max_completion_tokens", None)
    if system:
        out["system"] = "\n\n".join(str(s) for s in system)
    return out
