"""The records a batch job passes between its parts: requests in, input errors, outcomes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Endpoint = Literal["/v1/chat/completions", "/v1/embeddings", "/v1/messages"]
ENDPOINTS: tuple[Endpoint, ...] = ("/v1/chat/completions", "/v1/embeddings", "/v1/messages")


@dataclass(frozen=True, slots=True)
class Request:
    """One line of work: what to send, and where it came from.

    `custom_id` is unique within a job: the input's own id, or one derived from the
    line's content and position. `line` is the 1-based line (JSONL) or data row (CSV,
    Parquet) it came from, for error messages. `body` is the JSON body to send, with
    the model filled in.
    """

    custom_id: str
    line: int
    url: Endpoint
    body: dict[str, Any] = field(hash=False)


@dataclass(frozen=True, slots=True)
class InputError:
    """A malformed line: reported in OUTPUT.errors.jsonl; the rest of the job runs."""

    file: str
    line: int
    message: str
    field: str | None = None
    custom_id: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class JobInputError(Exception):
    """The input cannot be run at all (unreadable file, unknown format, missing column,
    duplicate custom_id): stop before the first request, exit code 2."""
