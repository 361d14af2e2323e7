"""OpenAI-compatible endpoints: OpenAI, Azure-style base URLs, vLLM, Ollama, the simulator."""

from __future__ import annotations

from typing import Any

from surge._feedback import Reply
from surge.providers._base import HTTPProvider, ProviderResponse

DEFAULT_BASE_URL = "https://api.openai.com/v1"


class OpenAIProvider(HTTPProvider):
    name = "openai"

    def __init__(
        self, *, base_url: str | None, api_key: str | None, max_connections: int = 100
    ) -> None:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        super().__init__(
            base_url=base_url or DEFAULT_BASE_URL,
            headers=headers,
            api_key=api_key,
            max_connections=max_connections,
        )

    async def send(self, url: str, body: dict[str, Any]) -> Reply[ProviderResponse]:
        # Batch-file urls carry the /v1 prefix; base URLs end in /v1 (or a deployment path).
        return await self.post(url.removeprefix("/v1/"), body)
