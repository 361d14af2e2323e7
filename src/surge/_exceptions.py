"""The one exception tree of surge.

```
SurgeError
├── RetryableError          worth another attempt
│   ├── RateLimitError      429: the provider said slow down (carries retry_after)
│   ├── ServerError         5xx, 408, 409: the provider failed, not the request
│   ├── TransportError      connection reset, malformed response
│   │   └── ConnectError    no connection at all: refused, DNS failure
│   └── AttemptTimeout      one attempt ran past `timeout=`
├── FatalError              retrying cannot help
│   ├── BadRequestError     400, 404, 422 and other 4xx: the request itself is wrong
│   ├── AuthenticationError 401, 403
│   ├── QuotaExceededError  429 `insufficient_quota`: the account's billing quota is spent
│   ├── BudgetExceeded      a token or cost budget would be passed
│   └── DeadlineExceeded    the overall deadline passed before the item finished
└── FailedResultsError      raised on demand by `Results.raise_for_failures()`
```

Foreign exceptions (httpx, openai, anthropic, plain OSError) are classified by
duck typing in `surge._retry.classify`, so callers never have to translate them.

Some failures are about the whole job, not one item: a key the provider refuses
(AuthenticationError), a spent quota (QuotaExceededError), an endpoint nothing answers
at (ConnectError, again and again). The engine stops a run on these ("job-level
faults", see `surge.RunOptions`'s `stop_on_fault`) instead of failing every item.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from surge._feedback import RateLimitHints
    from surge._results import Result


class SurgeError(Exception):
    """Base of every error surge raises or records.

    Every class answers three questions the same way: `retryable` (is another attempt
    worth it), `reason` (a short code for logs and reports: "rate_limited",
    "auth_error", ...) and `status_code` (the HTTP status, when there was one).
    """

    retryable: bool = False
    reason: str = "error"
    status_code: int | None = None


class RetryableError(SurgeError):
    """An attempt failed in a way another attempt may not."""

    retryable = True
    reason = "retryable_error"

    def __init__(
        self,
        message: str = "",
        *,
        status_code: int | None = None,
        retry_after: float | None = None,
        hints: RateLimitHints | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retry_after = retry_after
        self.hints = hints


class RateLimitError(RetryableError):
    """HTTP 429. `retry_after` is the provider's own wait, in seconds, when it gave one."""

    reason = "rate_limited"


class ServerError(RetryableError):
    """HTTP 5xx, 408 or 409."""

    reason = "server_error"


class TransportError(RetryableError):
    """The connection failed or the response could not be read."""

    reason = "transport_error"


class ConnectError(TransportError):
    """The connection could not be made at all (refused, DNS failure): nothing was sent,
    so nothing was paid. Retried per item; many in a row stop the run (a job-level fault)."""

    reason = "connect_error"


class AttemptTimeout(RetryableError):
    """One attempt took longer than the per-attempt `timeout=`."""

    reason = "timeout"


class FatalError(SurgeError):
    """Retrying cannot help: surge records the failure after one attempt.

    A plain FatalError (reason "call_error") stands for an exception surge does not
    recognise, raised by the call itself: a bug, not a provider failure.
    """

    reason = "call_error"

    def __init__(self, message: str = "", *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class BadRequestError(FatalError):
    """HTTP 400, 404, 422 or another 4xx that says the request itself is wrong."""

    reason = "bad_request"


class AuthenticationError(FatalError):
    """HTTP 401 or 403."""

    reason = "auth_error"


class QuotaExceededError(FatalError):
    """OpenAI's 429 with `insufficient_quota`: the account's billing quota is spent.

    Not a rate limit: waiting does not help until someone adds credit, so it is never
    retried and stops the run (a job-level fault)."""

    reason = "quota_exceeded"


class BudgetExceeded(FatalError):
    """Starting the item would have passed the run's budget."""

    reason = "budget_exceeded"


class DeadlineExceeded(FatalError):
    """The overall `deadline=` passed before the item finished."""

    reason = "deadline_exceeded"


class FailedResultsError(SurgeError):
    """Raised by `Results.raise_for_failures()`; `.failures` holds the failed results."""

    reason = "failed_results"

    def __init__(self, failures: Sequence[Result[Any]]) -> None:
        self.failures = list(failures)
        first = self.failures[0] if self.failures else None
        detail = f"; first: item {first.index}: {first.error!r}" if first else ""
        super().__init__(f"{len(self.failures)} item(s) did not succeed{detail}")
