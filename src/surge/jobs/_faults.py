"""Job-level faults in plain words: what stopped a `surge run`, and how to go on.

A job-level fault is a failure that says nothing about the item and would fail every
other one too: the provider refuses the key (401/403), the billing quota is spent (429
`insufficient_quota`), or nothing answers at the base URL. The engine stops the run on
the first one (`Run.fault`); the job leaves every unfinished item pending, so the same
command, rerun once the cause is fixed, sends exactly those. These messages name the
cause (the environment variable, the URL) and never the key.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from surge._exceptions import AuthenticationError, ConnectError, QuotaExceededError
from surge.jobs._model import JobInputError
from surge.providers import scrub
from surge.providers._anthropic import DEFAULT_BASE_URL as ANTHROPIC_BASE_URL
from surge.providers._openai import DEFAULT_BASE_URL as OPENAI_BASE_URL

# Hosted APIs that answer nothing without a key: a job aimed at one with its key
# variable unset is refused before anything is sent. Any other URL (a local vLLM, a
# proxy that adds the key) gets the request without one.
_KEYED_HOSTS = frozenset(
    {
        "api.openai.com",
        "api.anthropic.com",
        "api.groq.com",
        "api.mistral.ai",
        "api.together.xyz",
        "api.fireworks.ai",
        "api.deepseek.com",
        "openrouter.ai",
    }
)


def endpoint_url(provider: str, base_url: str | None) -> str:
    """The base URL a job talks to, for messages: the provider's default when none was
    given, and never with credentials (user:password@) in it."""
    url = base_url or (ANTHROPIC_BASE_URL if provider == "anthropic" else OPENAI_BASE_URL)
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def check_key(provider: str, base_url: str | None, key_env: str, key: str | None) -> None:
    """Refuse, before the first request, a job bound for a hosted API with no key."""
    if key or provider == "local":
        return
    url = endpoint_url(provider, base_url)
    if (urlsplit(url).hostname or "").lower() in _KEYED_HOSTS:
        raise JobInputError(
            f"{key_env} is not set, and {url} answers nothing without an API key. "
            f"HINT: export {key_env}=<your key>, or pass --api-key-env NAME to read it "
            "from another variable; nothing was sent."
        )


def describe_fault(
    error: BaseException, *, provider: str, base_url: str | None, key_env: str, key: str | None
) -> str:
    """What stopped the job and how to fix it, ending in how to go on."""
    url = endpoint_url(provider, base_url)
    detail = scrub(str(error) or type(error).__name__, key).rstrip(". ")
    status = getattr(error, "status_code", None)
    rerun = "then rerun the same command: it sends exactly the items not yet done."
    if isinstance(error, QuotaExceededError):
        return (
            f"{url} says the account's billing quota is spent (HTTP 429 insufficient_quota): "
            f"{detail}. HINT: add credit or raise the spending limit in the provider's "
            f"billing settings (or use another account's key via --api-key-env), {rerun}"
        )
    if isinstance(error, AuthenticationError):
        if not key:
            hint = (
                f"{key_env} is not set: export {key_env}=<your key> (or pass --api-key-env "
                "NAME to read it from another variable)"
            )
        elif status == 403:
            hint = (
                f"the key in {key_env} is not allowed to do this: check the model name and "
                "the key's project, organisation and permissions"
            )
        else:
            hint = f"the key in {key_env} was refused: check that it is a valid key for {url}"
        return f"{url} refused the API key (HTTP {status}): {detail}. HINT: {hint}, {rerun}"
    if isinstance(error, ConnectError):
        return (
            f"nothing answers at {url}: {detail}. HINT: check --base-url (scheme, host, port "
            f"and path, e.g. http://127.0.0.1:8000/v1) and that the server is running, {rerun}"
        )
    return f"{detail}. HINT: {rerun}"
