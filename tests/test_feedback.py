"""Reading the provider's feedback: rate-limit headers, Retry-After, usage, error classes."""

from __future__ import annotations

import asyncio
import email.utils

import httpx
import pytest

import surge
from surge._feedback import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("20ms", 0.02),
        ("1s", 1.0),
        ("1.5s", 1.5),
        ("6m0s", 360.0),
        ("1h2m3s", 3723.0),
        ("2.25", 2.25),
    ],
)
def test_openai_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_unparseable_duration_is_none() -> None:
    assert parse_duration("soon") is None
    assert parse_duration("3x") is None


def test_retry_after_forms() -> None:
    def retry_after(headers: dict[str, str], now: float | None = None) -> float | None:
        return surge.parse_rate_limit_headers(headers, now=now).retry_after

    assert retry_after({"retry-after": "7"}) == 7.0
    assert retry_after({"Retry-After-Ms": "250", "retry-after": "1"}) == 0.25
    date = email.utils.formatdate(1_000_030.0, usegmt=True)
    assert retry_after({"retry-after": date}, now=1_000_000.0) == pytest.approx(30.0)
    assert retry_after({}) is None


def test_openai_headers() -> None:
    hints = surge.parse_rate_limit_headers(
        httpx.Headers(
            {
                "x-ratelimit-limit-requests": "600",
                "x-ratelimit-remaining-requests": "95",
                "x-ratelimit-reset-requests": "500ms",
                "x-ratelimit-limit-tokens": "100000",
                "x-ratelimit-remaining-tokens": "15000",
                "x-ratelimit-reset-tokens": "1.2s",
                "retry-after": "2",
            }
        )
    )
    assert hints.retry_after == 2.0
    requests = hints.dimensions["requests"]
    assert (requests.limit, requests.remaining, requests.reset) == (600, 95, 0.5)
    assert requests.server_burst() == pytest.approx(100.0)  # 95 + 0.5 s * 10/s
    assert hints.dimensions["tokens"].server_burst() == pytest.approx(17000.0)


def test_anthropic_headers_with_timestamp_resets() -> None:
    now = 1_700_000_000.0
    reset = "2023-11-14T22:13:22Z"  # now + 2 s
    hints = surge.parse_rate_limit_headers(
        {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "49",
            "anthropic-ratelimit-requests-reset": reset,
            "anthropic-ratelimit-input-tokens-limit": "40000",
            "anthropic-ratelimit-input-tokens-remaining": "39000",
            "anthropic-ratelimit-input-tokens-reset": reset,
        },
        now=now,
    )
    assert hints.dimensions["requests"].reset == pytest.approx(2.0)
    assert hints.dimensions["input_tokens"].remaining == 39000


def test_plain_dict_headers_are_matched_case_insensitively() -> None:
    hints = surge.parse_rate_limit_headers({"X-RateLimit-Remaining-Requests": "3"})
    assert hints.dimensions["requests"].remaining == 3


def _status_error(status: int, headers: dict[str, str] | None = None) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    response = httpx.Response(status, headers=headers, request=request)
    return httpx.HTTPStatusError(f"HTTP {status}", request=request, response=response)


def test_classify_httpx_status_errors_by_status() -> None:
    limited = surge.classify(_status_error(429, {"retry-after": "3"}))
    assert isinstance(limited, surge.RateLimitError) and limited.retry_after == 3.0
    assert isinstance(surge.classify(_status_error(503)), surge.ServerError)
    assert isinstance(surge.classify(_status_error(408)), surge.ServerError)
    assert isinstance(surge.classify(_status_error(401)), surge.AuthenticationError)
    assert isinstance(surge.classify(_status_error(422)), surge.BadRequestError)


def test_classify_transport_and_timeout_errors() -> None:
    request = httpx.Request("GET", "http://127.0.0.1/")
    assert isinstance(
        surge.classify(httpx.ReadTimeout("slow", request=request)), surge.AttemptTimeout
    )
    assert isinstance(
        surge.classify(httpx.ConnectError("refused", request=request)), surge.TransportError
    )
    assert isinstance(surge.classify(ConnectionResetError()), surge.TransportError)
    assert isinstance(surge.classify(asyncio.TimeoutError()), surge.AttemptTimeout)
    assert isinstance(surge.classify(KeyError("x")), surge.FatalError)


def test_classify_openai_sdk_errors() -> None:
    openai = pytest.importorskip("openai")
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    response = httpx.Response(429, headers={"retry-after-ms": "1500"}, request=request)
    error = openai.RateLimitError("rate limited", response=response, body=None)
    classified = surge.classify(error)
    assert isinstance(classified, surge.RateLimitError) and classified.retry_after == 1.5
    assert isinstance(
        surge.classify(openai.APIConnectionError(request=request)), surge.TransportError
    )
    assert isinstance(surge.classify(openai.APITimeoutError(request=request)), surge.AttemptTimeout)
    bad = openai.BadRequestError("bad", response=httpx.Response(400, request=request), body=None)
    assert isinstance(surge.classify(bad), surge.BadRequestError)


def test_headers_on_an_httpx_response_feed_the_limiter() -> None:
    """A call that returns the httpx.Response hands its headers to the limiter."""
    limiter = surge.Limiter()
    headers = {
        "x-ratelimit-limit-requests": "120",
        "x-ratelimit-remaining-requests": "5",
        "x-ratelimit-reset-requests": "1s",
    }

    async def call(x: int) -> httpx.Response:
        return httpx.Response(200, headers=headers, json={"x": x})

    results = surge.map(call, range(3), limiter=limiter)
    assert all(r.ok for r in results)
    [bucket] = limiter.statistics().buckets
    assert bucket.rate_per_minute == pytest.approx(120) and bucket.capacity == pytest.approx(7)
