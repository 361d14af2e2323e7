import surge


def test_public_names_are_exactly_these() -> None:
    expected = {
        "AttemptTimeout", "AuthenticationError", "BadRequestError", "BucketStatistics",
        "BudgetExceeded", "ConnectError", "DeadlineExceeded", "Event", "FailedResultsError", "FatalError",
        "LimitHint", "Limiter", "LimiterStatistics", "Permit", "QuotaExceededError", "RateLimitError",
        "RateLimitHints", "Reply", "Result", "Results", "RetryPolicy", "RetryableError",
        "Run", "RunOptions", "RunStatistics", "ServerError", "SurgeError", "TransportError",
        "Usage", "__version__", "as_completed", "classify", "constant", "error_for_status",
        "exponential", "full_jitter", "gather", "map", "parse_rate_limit_headers", "wire",
    }  # fmt: skip
    assert set(surge.__all__) == expected
    for name in expected:
        assert hasattr(surge, name), name


def test_private_modules_stay_private() -> None:
    public_modules = {
        n
        for n in dir(surge)
        if not n.startswith("_") and type(getattr(surge, n)).__name__ == "module"
    }
    assert public_modules <= {"testing", "cli", "sim", "rl", "ray", "jobs", "report", "providers"}
