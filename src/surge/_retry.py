"""Retry policy: which failures deserve another attempt, and how long to wait first.

Waits are small pure functions of the attempt number and a random source, in the
manner of tenacity's `wait` module, so they are tested without sleeping. The default
is exponential backoff with full jitter: uniform(0, min(cap, base * 2**n)), which
spreads retries out instead of sending them back in lockstep
(https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/).
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from surge._exceptions import (
    AttemptTimeout,
    AuthenticationError,
    BadRequestError,
    ConnectError,
    FatalError,
    QuotaExceededError,
    RateLimitError,
    RetryableError,
    ServerError,
    TransportError,
)
from surge._feedback import RateLimitHints, parse_rate_limit_headers

Wait = Callable[[int, random.Random], float]
"""A wait strategy: (attempt number starting at 1, rng) -> seconds."""


def full_jitter(*, base: float = 0.5, cap: float = 30.0) -> Wait:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**(attempt-1)))."""
    if base < 0 or cap < 0:
        raise ValueError("full_jitter: base and cap must be >= 0")

    def wait(attempt: int, rng: random.Random) -> float:
        return rng.uniform(0.0, min(cap, base * 2.0 ** max(0, attempt - 1)))

    return wait


def exponential(*, base: float = 0.5, cap: float = 30.0) -> Wait:
    """Deterministic exponential backoff: min(cap, base * 2**(attempt-1)). Mostly for tests."""

    def wait(attempt: int, rng: random.Random) -> float:
        return min(cap, base * 2.0 ** max(0, attempt - 1))

    return wait


def constant(seconds: float) -> Wait:
    def wait(attempt: int, rng: random.Random) -> float:
        return seconds

    return wait


@dataclass(frozen=True)
class RetryPolicy:
    """How many times to retry and how long to wait between attempts.

    `max_retries` counts retries after the first attempt. A Retry-After from the
    provider wins over the computed wait. `max_wait` bounds any single wait,
    Retry-After included, so a confused server cannot park a job for an hour.
    """

    max_retries: int = 5
    wait: Wait = field(default_factory=full_jitter)
    max_wait: float = 120.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(
                f"max_retries must be >= 0, got {self.max_retries}. "
                "HINT: use max_retries=0 to attempt each item once."
            )

    def delay(self, attempt: int, error: BaseException, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return min(self.max_wait, float(retry_after))
        return min(self.max_wait, self.wait(attempt, rng))


_RETRYABLE_STATUS = {408, 409, 429}
_AUTH_STATUS = {401, 403}


def error_for_status(
    status: int,
    message: str = "",
    headers: Mapping[str, str] | None = None,
    body: object = None,
) -> RetryableError | FatalError:
    """The surge error for an HTTP status, with Retry-After and rate-limit hints attached.

    `body` (the decoded JSON error, or its raw text) tells OpenAI's spent billing quota
    (429 with `insufficient_quota`, a QuotaExceededError that is never retried) from a
    rate limit (RateLimitError).
    """
    hints = parse_rate_limit_headers(headers) if headers else RateLimitHints()
    text = message or f"HTTP {status}"
    if status == 429:
        if _is_quota_exhausted(body) or (body is None and "insufficient_quota" in message):
            return QuotaExceededError(text, status_code=status)
        return RateLimitError(text, status_code=status, retry_after=hints.retry_after, hints=hints)
    if status >= 500 or status in _RETRYABLE_STATUS:
        return ServerError(text, status_code=status, retry_after=hints.retry_after, hints=hints)
    if status in _AUTH_STATUS:
        return AuthenticationError(text, status_code=status)
    return BadRequestError(text, status_code=status)


_QUOTA_CODE = "insufficient_quota"


def _is_quota_exhausted(body: object) -> bool:
    """True for OpenAI's `{"error": {"code"|"type": "insufficient_quota"}}`, whole or
    unwrapped (the openai SDK keeps only the inner object), as JSON text or decoded."""
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        if _QUOTA_CODE not in body:
            return False
        try:
            body = json.loads(body)
        except ValueError:
            return False
    if not isinstance(body, Mapping):
        return False
    inner = body.get("error")
    for part in (body, inner if isinstance(inner, Mapping) else {}):
        if part.get("code") == _QUOTA_CODE or part.get("type") == _QUOTA_CODE:
            return True
    return False


def classify(error: BaseException) -> RetryableError | FatalError:
    """Map any exception to surge's tree, so the retry decision is made in one place.

    Recognised by duck typing, with no import of the libraries concerned:
    - surge's own errors pass through (the same object);
    - anything with a `status_code` (or `.response.status_code`), like
      `httpx.HTTPStatusError` and the openai/anthropic `APIStatusError`, by status;
      a 429 whose error code is `insufficient_quota` is a QuotaExceededError;
    - timeouts (`TimeoutError`, `httpx.TimeoutException`, `openai.APITimeoutError`);
    - connections that could not be made at all (`ConnectionRefusedError`, a DNS
      failure, `httpx.ConnectError` and `ConnectTimeout`, aiohttp's
      `ClientConnectorError` and `ConnectionTimeoutError`, an
      `openai.APIConnectionError` or `APITimeoutError` caused by one) are a ConnectError;
    - other connection failures (`OSError`, `httpx.TransportError`,
      `openai.APIConnectionError`) are a TransportError.
    Everything else is a bug in the call and is not retried.
    """
    if isinstance(error, (RetryableError, FatalError)):
        return error
    status, headers = _status_and_headers(error)
    if status is not None:
        classified = error_for_status(status, str(error), headers, _error_body(error))
        classified.__cause__ = error
        return classified
    names = {cls.__name__ for cls in type(error).__mro__}
    out: RetryableError
    if _is_connect_failure(error):
        out = ConnectError(f"{type(error).__name__}: {error}")
    elif isinstance(error, (TimeoutError, asyncio.TimeoutError)) or any(
        "Timeout" in n for n in names
    ):
        out = AttemptTimeout(str(error) or type(error).__name__)
    elif isinstance(error, (OSError, EOFError)) or names & {
        "TransportError",
        "APIConnectionError",
        "RemoteProtocolError",
        "ProtocolError",
        "DecodingError",
        "JSONDecodeError",
    }:
        out = TransportError(f"{type(error).__name__}: {error}")
    else:
        fatal = FatalError(f"{type(error).__name__}: {error}")
        fatal.__cause__ = error
        return fatal
    out.__cause__ = error
    return out


# httpx/httpx2 and httpcore's ConnectError and ConnectTimeout, aiohttp's
# ClientConnectorError (and its DNS and certificate subclasses, which a retry does not
# mend either) and ConnectionTimeoutError: no connection, so nothing was sent.
_CONNECT_ERROR_NAMES = frozenset(
    {"ConnectError", "ConnectTimeout", "ClientConnectorError", "ConnectionTimeoutError"}
)


def _is_connect_failure(error: BaseException) -> bool:
    """Whether no connection could be made, looking through the wrappers SDKs add
    (`openai.APIConnectionError` raised from `httpx.ConnectError` raised from OSError)."""
    seen = 0
    current: BaseException | None = error
    while current is not None and seen < 6:
        if isinstance(current, (ConnectionRefusedError, socket.gaierror)):
            return True
        if {cls.__name__ for cls in type(current).__mro__} & _CONNECT_ERROR_NAMES:
            return True
        current = current.__cause__ or current.__context__
        seen += 1
    return False


def _error_body(error: BaseException) -> object:
    """The decoded error body an SDK exception carries (openai/anthropic `.body`), or the
    text of an already-read `.response`; None when there is neither."""
    body = getattr(error, "body", None)
    if body is not None:
        return body
    code = getattr(error, "code", None)
    if isinstance(code, str):
        return {"code": code, "type": getattr(error, "type", None)}
    response: Any = getattr(error, "response", None)
    try:
        return response.text if response is not None else None
    except Exception:  # a streamed response not read yet: no body to look at
        return None


def _status_and_headers(error: BaseException) -> tuple[int | None, Mapping[str, str] | None]:
    response: Any = getattr(error, "response", None)
    status = getattr(error, "status_code", None)
    if not isinstance(status, int) and response is not None:
        status = getattr(response, "status_code", None)
    headers = getattr(response, "headers", None) if response is not None else None
    if headers is None:
        headers = getattr(error, "headers", None)
    if not isinstance(status, int):
        return None, None
    return status, headers if isinstance(headers, Mapping) else None
