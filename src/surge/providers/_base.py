"""What every provider shares: the response record, the protocol, key scrubbing."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from surge._exceptions import ConnectError, TransportError
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
    """One aiohttp session (one connection pool) for the job, and the shared plumbing.

    aiohttp rather than httpx: at a few thousand requests a second httpcore's pool
    bookkeeping grows with the number of connections and became the job's bottleneck
    (about 300 requests/s at concurrency 50, against a simulator serving 3,000+).
    """

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
        self._base_url = base_url.rstrip("/") + "/"
        self._headers = dict(headers)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running loop that will use it.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                # The engine's per-attempt timeout governs; aiohttp's own would race it.
                timeout=aiohttp.ClientTimeout(total=None, connect=30.0),
            )
        return self._session

    async def post(self, path: str, body: dict[str, Any]) -> Reply[ProviderResponse]:
        url = self._base_url + path.lstrip("/")
        try:
            async with self._client().post(url, json=body) as response:
                raw = await response.read()
                status, headers = response.status, response.headers
        except aiohttp.ClientConnectorError as exc:
            # Refused, DNS, TLS handshake: nothing was sent. Many in a row stop the job.
            raise ConnectError(
                scrub(f"cannot connect to {url}: {type(exc).__name__}: {exc}", self._api_key)
            ) from None
        except aiohttp.ClientError as exc:
            raise TransportError(scrub(f"{type(exc).__name__}: {exc}", self._api_key)) from None
        request_id = headers.get("x-request-id") or headers.get("request-id")
        if status != 200:
            # The body tells a spent billing quota (429 insufficient_quota) from a rate limit.
            raise error_for_status(
                status,
                scrub(f"HTTP {status}: {_error_message(raw)}", self._api_key),
                headers,
                _json_or_text(raw),
            )
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise TransportError(f"malformed response body: {exc}", status_code=200) from None
        if not isinstance(data, dict):
            raise TransportError("malformed response body: not a JSON object", status_code=200)
        return Reply(
            ProviderResponse(200, request_id, data), usage=extract_usage(data), headers=headers
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _json_or_text(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return raw[:2000].decode("utf-8", "replace")


def _error_message(raw: bytes) -> str:
    try:
        data = json.loads(raw)
    except ValueError:
        return raw[:300].decode("utf-8", "replace")
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return json.dumps(data)[:300]
