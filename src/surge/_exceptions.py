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
    """Base of every error surge raises or records."""


class RetryableError(SurgeError):
    """An attempt failed in a way another attempt may not."""

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


class ServerError(RetryableError):
    """HTTP 5xx, 408 or 409."""


class TransportError(RetryableError):
    """The connection failed or the response could not be read."""


class ConnectError(TransportError):
    """The connection could not be made at all (refused, DNS failure): nothing was sent,
    so nothing was paid. Retried per item; many in a row stop the run (a job-level fault)."""


class AttemptTimeout(RetryableError):
    """One attempt took longer than the per-attempt `timeout=`."""


class FatalError(SurgeError):
    """Retrying cannot help: surge records the failure after one attempt."""

    def __init__(self, message: str = "", *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class BadRequestError(FatalError):
    """HTTP 400, 404, 422 or another 4xx that says the request itself is wrong."""


class AuthenticationError(FatalError):
    """HTTP 401 or 403."""


class QuotaExceededError(FatalError):
    """OpenAI's 429 with `insufficient_quota`: the account's billing quota is spent.

    Not a rate limit: waiting does not help until someone adds credit, so it is never
    retried and stops the run (a job-level fault)."""


class BudgetExceeded(FatalError):
    """Starting the item would have passed the run's budget."""


class DeadlineExceeded(FatalError):
    """The overall `deadline=` passed before the item finished."""


class FailedResultsError(SurgeError):
    """Raised by `Results.raise_for_failures()`; `.failures` holds the failed results."""

    def __init__(self, failures: Sequence[Result[Any]]) -> None:
        self.failures = list(failures)
        first = self.failures[0] if self.failures else None
        detail = f"; first: item {first.index}: {first.error!r}" if first else ""
        super().__init__(f"{len(self.failures)} item(s) did not succeed{detail}")
