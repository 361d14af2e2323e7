"""What every provider shares: the response record, the protocol, key scrubbing."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from surge._exceptions import TransportError
from surge._feedback import Reply, extract_usage
from surge._retry import error_for_status


@dataclass(frozen=True, slots=True)
class ProviderResponse:
    status_code: int
    request_id: str | None
    body: dict[str, Any]


class Provider(Protocol):
    name: str

    async def send(self, url: str, body: dict[str, Any]) -> Reply[ProviderResponse]: ...

    async def aclose(self) -> None: ...


def scrub(text: str, secret: str | None) -> str:
    """Remove the API key (and any long prefix of it) from text bound for a file or log."""
    if not secret or not text:
        return text
    text = text.replace(secret, "***")
    # Some providers echo a truncated key ("sk-abc...xyz"): drop any 8+ char prefix too.
    for length in range(len(secret) - 1, 7, -1):
        prefix = secret[:length]
        if prefix in text:
            text = text.replace(prefix, "***")
    return text


class HTTPProvider:
    """An httpx client with one connection pool for the job, and the shared plumbing."""

    name = "http"

    def __init__(
        self,
        *,
        base_url: str,
        headers: Mapping[str, str],
        api_key: str | None,
        max_connections: int,
    ) -> None:
        self._api_key = api_key
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/",
            headers=dict(headers),
            # The engine's per-attempt timeout governs; httpx's own would only race it.
            timeout=httpx.Timeout(None, connect=30.0),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )

    async def post(self, path: str, body: dict[str, Any]) -> Reply[ProviderResponse]:
        response = await self._client.post(path.lstrip("/"), json=body)
        request_id = response.headers.get("x-request-id") or response.headers.get("request-id")
        if response.status_code != 200:
            raise error_for_status(
                response.status_code,
                scrub(f"HTTP {response.status_code}: {_error_message(response)}", self._api_key),
                response.headers,
            )
        try:
            data = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise TransportError(f"malformed response body: {exc}", status_code=200) from None
        if not isinstance(data, dict):
            raise TransportError("malformed response body: not a JSON object", status_code=200)
        return Reply(
            ProviderResponse(200, request_id, data),
            usage=extract_usage(data),
            headers=response.headers,
        )

    async def aclose(self) -> None:
        await self._client.aclose()


def _error_message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:300]
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return json.dumps(data)[:300]
