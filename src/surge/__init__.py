"""surge: make AI workloads fast by overlapping the waiting.

Run many LLM and embedding calls concurrently, as fast as the provider's limits allow
and no faster::

    import surge

    results = await surge.gather(call, prompts, concurrency=50, rpm=500, tpm=200_000,
                                 tokens=lambda p: len(p) // 4 + 256)
    for r in results:
        print(r.index, r.value if r.ok else r.error)
"""

from surge._engine import Run, RunOptions, as_completed, gather, map
from surge._exceptions import (
    AttemptTimeout,
    AuthenticationError,
    BadRequestError,
    BudgetExceeded,
    ConnectError,
    DeadlineExceeded,
    FailedResultsError,
    FatalError,
    QuotaExceededError,
    RateLimitError,
    RetryableError,
    ServerError,
    SurgeError,
    TransportError,
)
from surge._feedback import LimitHint, RateLimitHints, Reply, parse_rate_limit_headers
from surge._limits import BucketStatistics, Limiter, LimiterStatistics, Permit
from surge._results import Event, Result, Results, RunStatistics, Usage
from surge._retry import RetryPolicy, classify, constant, error_for_status, exponential, full_jitter
from surge._wire import wire

__version__ = "0.1.0"

__all__ = [
    "AttemptTimeout",
    "AuthenticationError",
    "BadRequestError",
    "BucketStatistics",
    "BudgetExceeded",
    "ConnectError",
    "DeadlineExceeded",
    "Event",
    "FailedResultsError",
    "FatalError",
    "LimitHint",
    "Limiter",
    "LimiterStatistics",
    "Permit",
    "QuotaExceededError",
    "RateLimitError",
    "RateLimitHints",
    "Reply",
    "Result",
    "Results",
    "RetryPolicy",
    "RetryableError",
    "Run",
    "RunOptions",
    "RunStatistics",
    "ServerError",
    "SurgeError",
    "TransportError",
    "Usage",
    "__version__",
    "as_completed",
    "classify",
    "constant",
    "error_for_status",
    "exponential",
    "full_jitter",
    "gather",
    "map",
    "parse_rate_limit_headers",
    "wire",
]
