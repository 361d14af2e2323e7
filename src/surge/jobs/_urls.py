"""Base URLs without their credentials, for anything that is written down or compared."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# Query parameters that carry credentials (Azure's `api-key`, Google's `key`, signed
# URLs' `sig`...): matched as parts of the lowercased name.
_SECRET_PARAM_PARTS = ("key", "token", "secret", "sig", "auth", "pass", "cred")


def without_credentials(url: str) -> str:
    """URL less its user and password and any credential-like query parameter, with the
    scheme and host lowercased and no trailing slash.

    >>> without_credentials("https://me:pw@Example.com/v1/?api-key=s3cret&api-version=2")
    'https://example.com/v1?api-version=2'
    """
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    query = [
        (name, value)
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
        if not any(part in name.lower() for part in _SECRET_PARAM_PARTS)
    ]
    return urlunsplit(
        (parts.scheme.lower(), host, parts.path.rstrip("/"), urlencode(sorted(query)), "")
    )
