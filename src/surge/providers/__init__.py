"""Providers turn one request into one response, in the engine's terms.

Each holds one pooled HTTP client for the whole job and does no retrying of its own:
surge's retry policy is the only one. Errors come out as surge's exception tree, with
the provider's Retry-After and rate-limit headers attached, and with the API key
scrubbed from any message.
"""

from surge.providers._anthropic import AnthropicProvider
from surge.providers._base import Provider, ProviderResponse, scrub
from surge.providers._local import LocalEmbeddingProvider
from surge.providers._openai import OpenAIProvider

__all__ = [
    "AnthropicProvider",
    "LocalEmbeddingProvider",
    "OpenAIProvider",
    "Provider",
    "ProviderResponse",
    "make_provider",
    "scrub",
]


def make_provider(
    kind: str, *, base_url: str | None, api_key: str | None, max_connections: int = 100
) -> Provider:
    """The provider for `surge run --provider KIND`."""
    if kind == "local":  # in-process model: no URL, no key, no connections
        return LocalEmbeddingProvider()
    if kind == "openai":
        return OpenAIProvider(base_url=base_url, api_key=api_key, max_connections=max_connections)
    if kind == "anthropic":
        return AnthropicProvider(
            base_url=base_url, api_key=api_key, max_connections=max_connections
        )
    raise ValueError(f"unknown provider {kind!r}. HINT: use openai, anthropic or local.")
