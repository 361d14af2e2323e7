"""Batch inputs: files (or stdin) in four formats, streamed into `Request`s.

- `batch`: the OpenAI Batch JSONL format, one `{"custom_id", "method", "url", "body"}`
  object per line.
- `jsonl`: one object per line with `prompt` (a string) or `messages` (a list), an
  optional `id`, and any other keys as body parameters (`model`, `max_tokens`, `system`,
  ...). For the embeddings endpoint the text is `input` (or `text`, or `prompt`).
- `csv` (and `.tsv`) and `parquet`: one request per row, its prompt taken from a column
  or rendered from a template over the row's columns.

Everything is read line by line (Parquet: record batch by record batch), so memory does
not grow with the input. A malformed line becomes an `InputError` and reading goes on;
an input that cannot be run at all (unreadable, unknown format, missing column) raises
`JobInputError` from `read_requests` itself, before a single request exists.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import importlib
import json
import string
import sys
from collections.abc import Generator, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Literal

from surge.jobs._model import ENDPOINTS, Endpoint, InputError, JobInputError, Request
from surge.jobs.tokens import estimate_input_tokens

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "FORMATS",
    "Format",
    "check_input",
    "derived_id",
    "detect_format",
    "estimate_input_tokens",
    "read_requests",
]

Format = Literal["batch", "jsonl", "csv", "parquet"]
FORMATS: tuple[Format, ...] = ("batch", "jsonl", "csv", "parquet")
STDIN = "-"
CHAT: Endpoint = "/v1/chat/completions"
EMBEDDINGS: Endpoint = "/v1/embeddings"
MESSAGES: Endpoint = "/v1/messages"
# Anthropic's Messages API refuses a request without max_tokens; OpenAI's has a default.
DEFAULT_MAX_TOKENS = 1024
PARQUET_BATCH_ROWS = 1024

_FORMATS_HELP = (
    "the formats are: batch (OpenAI Batch JSONL: custom_id, method, url, body), "
    'jsonl (one {"prompt": ...} or {"messages": [...]} object per line), '
    "csv (.csv, .tsv) and parquet (.parquet)"
)
# Defaults for generation that an embeddings request would be refused for.
_GENERATION_ONLY = frozenset(
    {
        "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "stop",
        "stop_sequences", "n", "presence_penalty", "frequency_penalty", "seed", "logprobs",
        "top_logprobs", "response_format", "tools", "tool_choice", "stream",
    }
)  # fmt: skip
_JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
_CSV_SUFFIXES = (".csv", ".tsv")
_PARQUET_SUFFIXES = (".parquet", ".pq")


class _Bad(Exception):
    """One line is wrong: which field, and what is wrong with it."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


# -- detection ----------------------------------------------------------------------------


def detect_format(path: str, first_line: str | None = None) -> Format:
    """The format of `path`: by its extension, else by its first non-blank line.

    `.parquet` is Parquet and `.csv`/`.tsv` CSV. JSON lines (`.jsonl`, `.json`,
    `.ndjson`, stdin `-`, or any other name) are `batch` when the first object has
    `custom_id` and `body`, else `jsonl`. For stdin pass the `first_line` you read; for
    a file it is read here when not given. Raises JobInputError when no format fits.

        >>> detect_format("prompts.csv")
        'csv'
        >>> detect_format("-", '{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {}}')
        'batch'
    """
    name = _display(path)
    suffix = "" if path == STDIN else Path(path).suffix.lower()
    if suffix in _PARQUET_SUFFIXES:
        return "parquet"
    if suffix in _CSV_SUFFIXES:
        return "csv"
    if first_line is None and path != STDIN:
        with _open(path) as stream:
            if suffix not in _JSON_SUFFIXES and stream.read(4) == b"PAR1":
                return "parquet"  # Parquet's magic number, whatever the file is called
            stream.seek(0)
            _, raw = _peek(stream)
        first_line = _decode_loosely(raw) if raw is not None else None
    parsed = _try_json(first_line)
    if isinstance(parsed, dict):
        return "batch" if "custom_id" in parsed and "body" in parsed else "jsonl"
    if first_line is not None and first_line.lstrip().startswith("["):
        raise JobInputError(
            f"{name}: a JSON array, not JSON Lines. HINT: write one JSON object per line, "
            "e.g. with `jq -c '.[]'`"
        )
    if suffix in _JSON_SUFFIXES:
        # A malformed first line is reported on its line; the rest is still read.
        return "jsonl"
    if first_line is None:
        raise JobInputError(
            f"{name}: empty, so its format cannot be told. HINT: pass --format; {_FORMATS_HELP}"
        )
    raise JobInputError(
        f"{name}: cannot tell the format: the name has no known extension and the first "
        f"line is not a JSON object. HINT: pass --format; {_FORMATS_HELP}"
    )


# -- the entry point ----------------------------------------------------------------------


def read_requests(
    path: str,
    *,
    format: Format | None = None,
    model: str | None = None,
    endpoint: Endpoint | None = None,
    prompt_column: str | None = None,
    template: str | None = None,
    id_column: str | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> Iterator[Request | InputError]:
    """Stream the requests of a batch input, one per line or row, in input order.

    `path` is a file or "-" for stdin; `format` is detected when None. `model` fills
    `body["model"]` where a line names none. `endpoint` (default
    "/v1/chat/completions"; "/v1/embeddings" and "/v1/messages" too) is where plain
    JSONL, CSV and Parquet requests go; batch lines carry their own `url`. CSV and
    Parquet need exactly one of `prompt_column` and `template` (a `str.format` template
    over the row's columns), and may name an `id_column`. `defaults` are body
    parameters for lines that do not set them (`max_tokens`, `temperature`, ...; a
    `system` default becomes a system message, or Anthropic's `system` field;
    generation parameters are left out of embedding requests).

    Ids: a line's own id (`custom_id`, `id`, or the id column) is used as is. A line
    without one gets `line-{N}-{H}`: N its 1-based line (CSV: the physical line its row
    starts on, the header being line 1; Parquet: the row number), H the first 12 hex
    digits of the SHA-256 of the line's own content as canonical JSON (keys sorted, no
    spaces, UTF-8; for CSV and Parquet the mapping of the columns used to their values),
    taken before `model` and `defaults` are applied. So the same file read twice gives
    the same ids, identical lines get different ids, and a rerun with another --model
    keeps the ids (the journal then reports the changed requests instead of quietly
    starting a second job).

    Raises JobInputError here, before any request: an unreadable path, an unknown or
    undetectable format, an unknown endpoint, CSV/Parquet without a prompt source or
    model, or a column that does not exist. Malformed lines are yielded as InputError
    (with file, line, field and what is wrong), and reading goes on. Blank lines are
    skipped; an input of nothing but blank lines (a CSV without even its header too)
    yields nothing, whatever its name. `check_input` makes the same checks without
    reading a request.

        >>> for item in read_requests("prompts.jsonl", model="gpt-4o-mini"):  # doctest: +SKIP
        ...     print(item.custom_id if isinstance(item, Request) else f"bad: {item}")
    """
    name = _display(path)
    _check_options(path, format, endpoint)
    url = _endpoint_option(endpoint)
    settings = _Settings(name, url, model, dict(defaults or {}))

    peeked: list[bytes] = []
    if path == STDIN:
        if format is None:
            peeked, first = _peek(sys.stdin.buffer)
            # Nothing but blank lines: an empty input (no requests), whatever its format.
            format = "jsonl" if first is None else detect_format(path, _decode_loosely(first))
    elif format is None:
        try:
            format = detect_format(path)
        except JobInputError:
            if not _is_blank(path):
                raise
            format = "jsonl"  # an empty input: no requests
    else:
        _open(path).close()  # an unreadable path stops here, not at the first next()
    if format == "csv" and path != STDIN and _is_blank(path):
        format = "jsonl"  # no header and no rows: an empty input, as an empty JSONL is

    if format in ("batch", "jsonl"):
        return _json_lines(_raw_lines(path, peeked), settings, batch_only=format == "batch")
    if prompt_column is not None and template is not None:
        raise JobInputError(
            f"{name}: --prompt-column and --template both given; pass one. HINT: a template "
            f'can use that column itself: --template "... {{{prompt_column}}} ..."'
        )
    if model is None and not settings.defaults.get("model"):
        raise JobInputError(
            f"{name}: no model: {format.upper()} rows name none. HINT: pass --model, "
            "e.g. --model gpt-4o-mini"
        )
    if format == "csv":
        return _csv_requests(path, peeked, settings, prompt_column, template, id_column)
    return _parquet_requests(path, settings, prompt_column, template, id_column)


def check_input(
    path: str,
    *,
    format: Format | None = None,
    model: str | None = None,
    endpoint: Endpoint | None = None,
    prompt_column: str | None = None,
    template: str | None = None,
    id_column: str | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """Raise the JobInputError that `read_requests` would raise before its first
    request, without reading a request: so a job can refuse bad options before it
    creates anything. A file is opened (and a CSV header or Parquet schema read); stdin
    is not touched, so only the format and endpoint options are checked for it.

        >>> check_input("prompts.jsonl", format="xlsx")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        surge.jobs._model.JobInputError: prompts.jsonl: unknown format 'xlsx'; ...
    """
    if path == STDIN:
        _check_options(path, format, endpoint)
        return
    records = read_requests(
        path, format=format, model=model, endpoint=endpoint, prompt_column=prompt_column,
        template=template, id_column=id_column, defaults=defaults,
    )  # fmt: skip
    close = getattr(records, "close", None)
    if close is not None:
        close()


def _check_options(path: str, format: str | None, endpoint: str | None) -> None:
    name = _display(path)
    if format is not None and format not in FORMATS:
        raise JobInputError(f"{name}: unknown format {format!r}; {_FORMATS_HELP}")
    _endpoint_option(endpoint)
    if path == STDIN and format == "parquet":
        raise JobInputError(
            "<stdin>: Parquet cannot be read from stdin (it needs random access). "
            "HINT: pass the file's path instead of -"
        )


# -- sources ------------------------------------------------------------------------------


def _is_blank(path: str) -> bool:
    """Whether a file holds nothing but blank lines (an empty input). Reads only as far
    as the first non-blank byte."""
    with _open(path) as stream:
        for raw in stream:
            if raw.strip():
                return False
    return True


def _display(path: str) -> str:
    return "<stdin>" if path == STDIN else path


def _open(path: str) -> IO[bytes]:
    try:
        return open(path, "rb")  # closed by the caller
    except OSError as exc:
        raise JobInputError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _peek(stream: IO[bytes]) -> tuple[list[bytes], bytes | None]:
    """Lines up to and including the first non-blank one, which is also returned alone."""
    seen: list[bytes] = []
    for raw in stream:
        seen.append(raw)
        if raw.strip():
            return seen, raw
    return seen, None


def _decode_loosely(raw: bytes) -> str:
    return raw.removeprefix(codecs.BOM_UTF8).decode("utf-8", "replace")


def _raw_lines(path: str, peeked: list[bytes]) -> Generator[bytes, None, None]:
    """The input's lines as bytes (split on \\n only), without a leading UTF-8 BOM."""
    lines: Iterable[bytes]
    first = True
    if path == STDIN:
        lines = _chain(peeked, sys.stdin.buffer)
        for raw in lines:
            if first:
                raw, first = raw.removeprefix(codecs.BOM_UTF8), False
            yield raw
        return
    with _open(path) as stream:
        for raw in stream:
            if first:
                raw, first = raw.removeprefix(codecs.BOM_UTF8), False
            yield raw


def _chain(head: list[bytes], tail: Iterable[bytes]) -> Iterator[bytes]:
    yield from head
    yield from tail


def _try_json(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


# -- shared body rules --------------------------------------------------------------------


class _Settings:
    """What every line of one input shares."""

    def __init__(self, name: str, url: Endpoint, model: str | None, defaults: dict[str, Any]):
        self.name = name
        self.url = url
        self.model = model
        self.system = defaults.pop("system", None)
        self.defaults = defaults


def _endpoint_option(value: str | None) -> Endpoint:
    if value is None:
        return CHAT
    found = _as_endpoint("chat/completions" if value.strip().strip("/") == "chat" else value)
    if found is None:
        raise JobInputError(
            f"unknown endpoint {value!r}; the endpoints are: {', '.join(ENDPOINTS)}"
        )
    return found


def _as_endpoint(value: Any) -> Endpoint | None:
    """ "/v1/embeddings", "v1/embeddings" and "/embeddings" are one endpoint."""
    if not isinstance(value, str):
        return None
    path = "/" + value.strip().strip("/")
    if not path.startswith("/v1/"):
        path = "/v1" + path
    for endpoint in ENDPOINTS:
        if path == endpoint:
            return endpoint
    return None


def derived_id(line: int, content: Any) -> str:
    """The id of a line that has none: its position plus a digest of its content.

    >>> derived_id(3, {"prompt": "hi"})
    'line-3-14479f4e87d3'
    """
    canonical = _CANONICAL.encode(content)
    return f"line-{line}-{hashlib.sha256(canonical.encode()).hexdigest()[:12]}"


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return "an empty string" if not value else f"the string {value[:40]!r}"
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    return "an object"


def _apply_system(body: dict[str, Any], url: Endpoint, system: Any, field: str) -> None:
    """A `system` prompt, in the shape the endpoint wants it."""
    if url == EMBEDDINGS:
        raise _Bad(field, "not used by the embeddings endpoint")
    if url == MESSAGES:
        body["system"] = system
        return
    if not isinstance(system, str):
        raise _Bad(field, f"expected a string, got {_describe(system)}")
    body["messages"] = [{"role": "system", "content": system}, *body["messages"]]


def _hoist_system(body: dict[str, Any]) -> None:
    """Anthropic takes system prompts beside the messages, not as a message role."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return
    system = [m for m in messages if isinstance(m, dict) and m.get("role") == "system"]
    if not system:
        return
    texts = [m["content"] for m in system if isinstance(m.get("content"), str)]
    if len(texts) < len(system):
        return  # leave block-shaped content for the provider to judge
    body["messages"] = [m for m in messages if m not in system]
    joined = "\n\n".join(texts)
    body["system"] = (
        f"{body['system']}\n\n{joined}" if isinstance(body.get("system"), str) else joined
    )


def _finish(body: dict[str, Any], url: Endpoint, s: _Settings, prefix: str) -> dict[str, Any]:
    """Fill the model and the defaults where the line set none, then check the body."""
    if s.model is not None and body.get("model") is None:
        body["model"] = s.model
    for key, value in s.defaults.items():
        if url != EMBEDDINGS or key not in _GENERATION_ONLY:
            body.setdefault(key, value)
    if s.system is not None and url != EMBEDDINGS:
        has_system = "system" in body if url == MESSAGES else _starts_with_system(body)
        if not has_system:
            _apply_system(body, url, s.system, "system")
    if url == MESSAGES:
        body.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
    _check_body(body, url, prefix)
    return body


def _starts_with_system(body: dict[str, Any]) -> bool:
    messages = body.get("messages")
    return (
        isinstance(messages, list)
        and bool(messages)
        and isinstance(messages[0], dict)
        and messages[0].get("role") in ("system", "developer")
    )


def _check_body(body: dict[str, Any], url: Endpoint, prefix: str) -> None:
    model = body.get("model")
    if model is None:
        raise _Bad(f"{prefix}model", "no model: pass --model or give one per line")
    if not isinstance(model, str) or not model.strip():
        raise _Bad(f"{prefix}model", f"expected a non-empty string, got {_describe(model)}")
    for key in ("max_tokens", "max_completion_tokens"):
        if key in body:
            value = body[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise _Bad(f"{prefix}{key}", f"expected a positive integer, got {_describe(value)}")
    if url == EMBEDDINGS:
        if "input" not in body:
            raise _Bad(f"{prefix}input", "missing: the embeddings endpoint needs the text to embed")
        _check_input(body["input"], f"{prefix}input")
    else:
        if "messages" not in body:
            raise _Bad(f"{prefix}messages", "missing: a chat request needs a list of messages")
        _check_messages(body["messages"], f"{prefix}messages")


def _check_messages(messages: Any, field: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise _Bad(
            field,
            f"expected a non-empty list of {{role, content}} objects, got {_describe(messages)}",
        )
    for i, message in enumerate(messages):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise _Bad(where, f"expected an object with role and content, got {_describe(message)}")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise _Bad(f"{where}.role", f'expected a string such as "user", got {_describe(role)}')
        if "content" not in message:
            if "tool_calls" not in message and "function_call" not in message:
                raise _Bad(f"{where}.content", "missing")
        elif not isinstance(message["content"], (str, list)) and message["content"] is not None:
            raise _Bad(
                f"{where}.content",
                f"expected a string or a list of content parts, got {_describe(message['content'])}",
            )


def _check_input(value: Any, field: str) -> None:
    if isinstance(value, str):
        if value:
            return
    elif isinstance(value, list) and value:
        if all(isinstance(v, str) and v for v in value):
            return
        if all(_is_token_ids(v) for v in value) or _is_token_ids(value):
            return
    raise _Bad(
        field,
        "expected a non-empty string or a non-empty list of strings (or token ids), "
        f"got {_describe(value)}",
    )


def _is_token_ids(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    )


# -- JSON lines ---------------------------------------------------------------------------


def _json_lines(
    lines: Iterator[bytes], s: _Settings, *, batch_only: bool
) -> Iterator[Request | InputError]:
    for number, raw in enumerate(lines, 1):
        stripped = raw.strip()
        if stripped:
            yield _json_line(stripped, number, s, batch_only=batch_only)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# One of each, made once: json.loads/json.dumps with options build a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
)


def _json_line(raw: bytes, line: int, s: _Settings, *, batch_only: bool) -> Request | InputError:
    custom_id: str | None = None
    try:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Bad(None, f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
        try:
            obj = _DECODER.decode(text)
        except json.JSONDecodeError as exc:
            raise _Bad(None, f"invalid JSON: {exc.msg} (column {exc.colno})") from None
        except ValueError as exc:
            raise _Bad(None, f"invalid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise _Bad(None, f"expected a JSON object, got {_describe(obj)}")
        if batch_only or ("custom_id" in obj and "body" in obj):
            if isinstance(obj.get("custom_id"), str) and obj["custom_id"]:
                custom_id = obj["custom_id"]
            return _batch_line(obj, line, s)
        custom_id = _own_id(obj)
        return _plain_line(obj, line, s, custom_id)
    except _Bad as bad:
        return InputError(s.name, line, bad.message, field=bad.field, custom_id=custom_id)


def _batch_line(obj: dict[str, Any], line: int, s: _Settings) -> Request:
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise _Bad("custom_id", f"expected a non-empty string, got {_describe(custom_id)}")
    method = obj.get("method", "POST")  # leniently optional: POST is the only choice
    if not isinstance(method, str) or method.upper() != "POST":
        raise _Bad("method", f'expected "POST", got {_describe(method)}')
    if "url" not in obj:
        raise _Bad("url", f"missing; expected one of {', '.join(ENDPOINTS)}")
    url = _as_endpoint(obj["url"])
    if url is None:
        raise _Bad("url", f"expected one of {', '.join(ENDPOINTS)}, got {_describe(obj['url'])}")
    body = obj.get("body")
    if not isinstance(body, dict):
        raise _Bad("body", f"expected an object, got {_describe(body)}")
    return Request(custom_id, line, url, _finish(dict(body), url, s, "body."))


def _own_id(obj: dict[str, Any]) -> str | None:
    keys = [key for key in ("id", "custom_id") if key in obj]
    if not keys:
        return None
    if len(keys) > 1:
        raise _Bad("id", "give id or custom_id, not both")
    value = obj[keys[0]]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise _Bad(keys[0], f"expected a non-empty string or an integer, got {_describe(value)}")
    return str(value)


def _plain_line(obj: dict[str, Any], line: int, s: _Settings, custom_id: str | None) -> Request:
    params = {k: v for k, v in obj.items() if k not in ("id", "custom_id", "system")}
    url = s.url
    body: dict[str, Any]
    if url == EMBEDDINGS:
        keys = [key for key in ("input", "text", "prompt") if key in params]
        if not keys:
            raise _Bad("input", 'missing: give "input" (or "text", or "prompt"): the text to embed')
        if len(keys) > 1:
            raise _Bad(
                keys[1], f"give one of input, text and prompt; this line has {', '.join(keys)}"
            )
        text = params.pop(keys[0])
        _check_input(text, keys[0])
        body = {"input": text, **params}
    else:
        if "prompt" in params and "messages" in params:
            raise _Bad("prompt", 'give "prompt" or "messages", not both')
        if "prompt" in params:
            prompt = params.pop("prompt")
            if not isinstance(prompt, str) or not prompt:
                raise _Bad("prompt", f"expected a non-empty string, got {_describe(prompt)}")
            messages: Any = [{"role": "user", "content": prompt}]
        elif "messages" in params:
            messages = params.pop("messages")
            _check_messages(messages, "messages")
        else:
            raise _Bad(
                "prompt",
                'missing: give "prompt" (a string) or "messages" (a list of {role, content})',
            )
        body = {"messages": messages, **params}
        if "system" in obj:
            _apply_system(body, url, obj["system"], "system")
        if url == MESSAGES:
            _hoist_system(body)
    if url == EMBEDDINGS and "system" in obj:
        raise _Bad("system", "not used by the embeddings endpoint")
    body = _finish(body, url, s, "")
    return Request(custom_id or derived_id(line, obj), line, url, body)


# -- rows (CSV and Parquet) ---------------------------------------------------------------


class _Rows:
    """Turns one CSV or Parquet row into a request, per --prompt-column or --template."""

    def __init__(
        self,
        s: _Settings,
        columns: list[str],
        prompt_column: str | None,
        template: str | None,
        id_column: str | None,
    ) -> None:
        self.s = s
        self.prompt_column = prompt_column
        self.template = template
        self.id_column = id_column
        if prompt_column is None and template is None:
            raise JobInputError(
                f"{s.name}: which column holds the prompt? HINT: pass --prompt-column COLUMN "
                f'or --template "Summarize: {{text}}"; {_columns_help(columns)}'
            )
        used: list[str] = []
        if id_column is not None:
            _require_column(s.name, columns, id_column, "--id-column")
            used.append(id_column)
        if prompt_column is not None:
            _require_column(s.name, columns, prompt_column, "--prompt-column")
            used.append(prompt_column)
        if template is not None:
            for field in _template_fields(s.name, template, columns):
                _require_column(s.name, columns, field, "--template")
                used.append(field)
        self.used = list(dict.fromkeys(used))  # unique, in order

    def request(self, line: int, values: Mapping[str, Any]) -> Request | InputError:
        custom_id: str | None = None
        try:
            for column in self.used:
                if values[column] is None:
                    raise _Bad(column, "missing value (null)")
            if self.id_column is not None:
                custom_id = str(values[self.id_column])
                if not custom_id.strip():
                    custom_id = None
                    raise _Bad(self.id_column, "empty id")
            prompt = self._prompt(values)
            url = self.s.url
            body: dict[str, Any] = (
                {"input": prompt}
                if url == EMBEDDINGS
                else {"messages": [{"role": "user", "content": prompt}]}
            )
            body = _finish(body, url, self.s, "")
            return Request(custom_id or derived_id(line, dict(values)), line, url, body)
        except _Bad as bad:
            return InputError(self.s.name, line, bad.message, field=bad.field, custom_id=custom_id)

    def _prompt(self, values: Mapping[str, Any]) -> str:
        if self.prompt_column is not None:
            field, value = self.prompt_column, values[self.prompt_column]
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        else:
            assert self.template is not None
            field = "template"
            try:
                text = self.template.format_map(values)
            except (KeyError, IndexError, ValueError, TypeError, AttributeError) as exc:
                raise _Bad(field, f"cannot render this row: {exc}") from None
        if not text.strip():
            raise _Bad(field, "empty prompt")
        return text


def _columns_help(columns: list[str]) -> str:
    shown = ", ".join(repr(c) for c in columns[:30])
    more = f" and {len(columns) - 30} more" if len(columns) > 30 else ""
    return f"the columns are: {shown}{more}" if columns else "there are no columns"


def _require_column(name: str, columns: list[str], column: str, option: str) -> None:
    if column in columns:
        if columns.count(column) > 1:
            raise JobInputError(f"{name}: column {column!r} ({option}) appears more than once")
        return
    near = [c for c in columns if c.strip().lower() == column.strip().lower()]
    hint = f" Did you mean {near[0]!r}?" if near else ""
    raise JobInputError(
        f"{name}: no column {column!r} (named by {option});{hint} {_columns_help(columns)}"
    )


def _template_fields(name: str, template: str, columns: list[str]) -> list[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise JobInputError(
            f"{name}: bad --template {template!r}: {exc}. HINT: name columns in braces, "
            'e.g. "Summarize: {text}"; write {{ and }} for literal braces'
        ) from None
    fields: list[str] = []
    for _, field, _, _ in parsed:
        if field is None:
            continue
        base = field.split(".", 1)[0].split("[", 1)[0]
        if not base or base.isdigit():
            raise JobInputError(
                f"{name}: --template {template!r} has a positional field {{{field}}}; "
                f'name a column instead, e.g. "{{text}}". {_columns_help(columns)}'
            )
        fields.append(base)
    if not fields:
        raise JobInputError(
            f"{name}: --template {template!r} names no column, so every row would send the "
            f"same prompt. HINT: put a column in braces; {_columns_help(columns)}"
        )
    return fields


# -- CSV ----------------------------------------------------------------------------------

# Prompts can be whole documents; the csv module's default cap is 128 KiB per field.
_CSV_FIELD_LIMIT = 1 << 28


def _csv_text(name: str, raws: Iterable[bytes]) -> Iterator[str]:
    for number, raw in enumerate(raws, 1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JobInputError(
                f"{name}:{number}: not valid UTF-8 ({exc.reason} at byte {exc.start}). "
                "HINT: save the file as UTF-8"
            ) from None


def _csv_records(
    name: str, lines: Iterator[str], delimiter: str
) -> Iterator[tuple[int, list[str] | csv.Error]]:
    """(the physical line a record starts on, its fields or the parse error)."""
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:
        csv.field_size_limit(_CSV_FIELD_LIMIT)
    reader = csv.reader(lines, delimiter=delimiter)
    done = 0  # lines consumed so far
    while True:
        try:
            record: list[str] | csv.Error = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if reader.line_num == done:
                raise JobInputError(f"{name}:{done + 1}: cannot parse CSV: {exc}") from None
            record = exc
        start, done = done + 1, reader.line_num
        if record:  # [] is a blank line
            yield start, record


def _delimiter(path: str, first: str) -> str:
    if path != STDIN and Path(path).suffix.lower() == ".tsv":
        return "\t"
    return "\t" if "\t" in first and "," not in first else ","


def _csv_requests(
    path: str,
    peeked: list[bytes],
    s: _Settings,
    prompt_column: str | None,
    template: str | None,
    id_column: str | None,
) -> Iterator[Request | InputError]:
    # Read the header now, so a missing column stops the job before any request.
    consumed: list[bytes] = []
    raws = _raw_lines(path, peeked)

    def recording() -> Iterator[bytes]:
        for raw in raws:
            consumed.append(raw)
            yield raw

    text = _csv_text(s.name, recording())
    first = next(text, None)
    if first is None:  # stdin given as --format csv, holding nothing: an empty input
        raws.close()
        return iter(())
    delimiter = _delimiter(path, first)
    found = next(_csv_records(s.name, _chain_text(first, text), delimiter), None)
    if path != STDIN:
        raws.close()  # a file is read again from the top; stdin is replayed from `consumed`
    if found is None:  # nothing but blank lines
        raws.close()
        return iter(())
    header_line, header = found
    if isinstance(header, csv.Error):
        raise JobInputError(f"{s.name}:{header_line}: cannot read the CSV header: {header}")
    rows = _Rows(s, header, prompt_column, template, id_column)
    index = {column: header.index(column) for column in rows.used}
    source = _chain(consumed, raws) if path == STDIN else _raw_lines(path, [])
    return _csv_rows(s, source, delimiter, header, rows, index)


def _chain_text(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest


def _csv_rows(
    s: _Settings,
    source: Iterable[bytes],
    delimiter: str,
    header: list[str],
    rows: _Rows,
    index: dict[str, int],
) -> Iterator[Request | InputError]:
    records = _csv_records(s.name, _csv_text(s.name, source), delimiter)
    next(records, None)  # the header, checked already
    for line, record in records:
        if isinstance(record, csv.Error):
            yield InputError(s.name, line, f"cannot parse CSV: {record}")
        elif len(record) != len(header):
            yield InputError(
                s.name,
                line,
                f"expected {len(header)} fields (as in the header), found {len(record)}",
            )
        else:
            yield rows.request(line, {column: record[i] for column, i in index.items()})


# -- Parquet ------------------------------------------------------------------------------


def _parquet_requests(
    path: str,
    s: _Settings,
    prompt_column: str | None,
    template: str | None,
    id_column: str | None,
) -> Iterator[Request | InputError]:
    _open(path).close()
    try:
        # Imported by name: pyarrow ships no type information.
        pq = importlib.import_module("pyarrow.parquet")
    except ImportError as exc:  # pragma: no cover - pyarrow is a dependency
        raise JobInputError(f"{path}: reading Parquet needs pyarrow: pip install pyarrow") from exc
    try:
        parquet = pq.ParquetFile(path)
        columns = list(parquet.schema_arrow.names)
        parquet.close()
    except Exception as exc:  # pyarrow raises its own ArrowInvalid/OSError kinds
        raise JobInputError(f"{path}: not a readable Parquet file: {exc}") from exc
    rows = _Rows(s, columns, prompt_column, template, id_column)
    return _parquet_rows(pq, path, rows)


def _parquet_rows(pq: Any, path: str, rows: _Rows) -> Iterator[Request | InputError]:
    parquet = pq.ParquetFile(path)
    try:
        number = 0
        batches = parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=rows.used)
        while True:
            try:
                batch = next(batches, None)
            except Exception as exc:
                raise JobInputError(f"{path}: cannot read row {number + 1}: {exc}") from exc
            if batch is None:
                return
            for values in batch.to_pylist():
                number += 1
                yield rows.request(number, values)
    finally:
        parquet.close()
