"""Batch inputs: each format, detection, errors per line, ids, streaming."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from surge.jobs._model import InputError, JobInputError, Request
from surge.jobs.formats import check_input, derived_id, detect_format, read_requests

DATA = Path(__file__).parent / "data"


def read_all(path: str | Path, **options: Any) -> list[Request | InputError]:
    return list(read_requests(str(path), **options))


def requests(path: str | Path, **options: Any) -> list[Request]:
    items = read_all(path, **options)
    assert all(isinstance(item, Request) for item in items), [str(i) for i in items]
    return items  # type: ignore[return-value]


def write_lines(path: Path, lines: list[Any]) -> Path:
    """Objects as JSON, strings as they are, one per line."""
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def use_stdin(monkeypatch: pytest.MonkeyPatch, data: bytes | io.RawIOBase) -> None:
    raw = io.BytesIO(data) if isinstance(data, bytes) else data
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(raw)))  # type: ignore[arg-type]


def chat_line(i: int, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": f"c{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": f"q{i}"}], **body},
    }


# -- OpenAI Batch JSONL -------------------------------------------------------------------


def test_batch_file_gives_its_own_ids_urls_and_bodies() -> None:
    chat1, chat2, emb = requests(DATA / "batch.jsonl", model="sim-small")
    assert (chat1.custom_id, chat1.line, chat1.url) == ("chat-1", 1, "/v1/chat/completions")
    assert chat1.body["model"] == "gpt-4o-mini"  # the line's own model wins over --model
    assert chat1.body["max_tokens"] == 8 and len(chat1.body["messages"]) == 2
    assert chat2.body["model"] == "sim-small"  # filled where the line has none
    assert (emb.custom_id, emb.line, emb.url) == (
        "emb-1",
        4,
        "/v1/embeddings",
    )  # "v1/..." normalised
    assert emb.body["input"] == ["first text", "second text"]


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"custom_id": ""}, "custom_id", "expected a non-empty string, got an empty string"),
        ({"custom_id": 5}, "custom_id", "expected a non-empty string, got the number 5"),
        ({"method": "GET"}, "method", 'expected "POST"'),
        ({"url": "/v1/responses"}, "url", "expected one of /v1/chat/completions"),
        ({"body": []}, "body", "expected an object, got an empty list"),
        ({"body": {"model": "m", "messages": []}}, "body.messages", "expected a non-empty list"),
        ({"body": {"model": "m", "messages": "hi"}}, "body.messages", "expected a non-empty list"),
        ({"body": {"model": "m"}}, "body.messages", "missing"),
        (
            {"body": {"model": "m", "messages": [{"content": "x"}]}},
            "body.messages[0].role",
            'expected a string such as "user"',
        ),
        (
            {"body": {"model": "m", "messages": [{"role": "user", "content": 3}]}},
            "body.messages[0].content",
            "expected a string or a list of content parts",
        ),
        ({"body": {"messages": [{"role": "user", "content": "x"}]}}, "body.model", "no model"),
        (
            {"body": {"model": "", "messages": [{"role": "user", "content": "x"}]}},
            "body.model",
            "non-empty",
        ),
        (
            {
                "body": {
                    "model": "m",
                    "max_tokens": "ten",
                    "messages": [{"role": "user", "content": "x"}],
                }
            },
            "body.max_tokens",
            "expected a positive integer",
        ),
        (
            {"url": "/v1/embeddings", "body": {"model": "m", "input": ""}},
            "body.input",
            "non-empty string",
        ),
        (
            {"url": "/v1/embeddings", "body": {"model": "m", "input": [1.5]}},
            "body.input",
            "non-empty string",
        ),
    ],
)
def test_a_bad_batch_line_is_an_error_on_its_line_and_the_rest_is_read(
    tmp_path: Path, change: dict[str, Any], field: str, message: str
) -> None:
    bad = {**chat_line(2), **change}
    source = write_lines(tmp_path / "in.jsonl", [chat_line(1), bad, chat_line(3)])
    first, error, third = read_all(source, format="batch")
    assert isinstance(first, Request) and isinstance(third, Request) and third.line == 3
    assert isinstance(error, InputError)
    assert (error.file, error.line, error.field) == (str(source), 2, field)
    assert message in error.message
    assert str(error).startswith(f"{source}:2: {field}: ")
    if isinstance(bad.get("custom_id"), str) and bad["custom_id"]:
        assert error.custom_id == "c2"  # known, so the journal can report it by id


def test_batch_embeddings_accept_token_ids_and_messages_get_max_tokens(tmp_path: Path) -> None:
    lines = [
        {"custom_id": "e", "url": "/v1/embeddings", "body": {"model": "m", "input": [[1, 2], [3]]}},
        {"custom_id": "a", "method": "post", "url": "/v1/messages", "body": {"model": "claude", "messages": [{"role": "user", "content": "x"}]}},
    ]  # fmt: skip
    emb, anthropic = requests(write_lines(tmp_path / "in.jsonl", lines), format="batch")
    assert emb.body["input"] == [[1, 2], [3]]
    assert anthropic.url == "/v1/messages" and anthropic.body["max_tokens"] == 1024


def test_defaults_fill_what_a_line_leaves_out(tmp_path: Path) -> None:
    lines = [chat_line(1), chat_line(2, max_tokens=5)]
    one, two = requests(
        write_lines(tmp_path / "in.jsonl", lines), defaults={"max_tokens": 64, "temperature": 0}
    )
    assert (one.body["max_tokens"], one.body["temperature"]) == (64, 0)
    assert (two.body["max_tokens"], two.body["temperature"]) == (5, 0)


# -- plain JSONL --------------------------------------------------------------------------


def test_plain_jsonl_prompts_messages_ids_and_parameters() -> None:
    colour, fruit, planet, river = requests(DATA / "prompts.jsonl", model="sim-small")
    assert colour.url == "/v1/chat/completions"
    assert colour.body == {"model": "sim-small", "messages": [{"role": "user", "content": "Name a colour."}]}  # fmt: skip
    assert colour.custom_id.startswith("line-1-")
    assert fruit.custom_id == "7"  # an integer id becomes a string
    assert (fruit.body["max_tokens"], fruit.body["temperature"]) == (16, 0.2)
    assert planet.custom_id == "q-3" and planet.body["model"] == "gpt-4.1-nano"
    assert [m["role"] for m in planet.body["messages"]] == ["user", "assistant", "user"]
    assert river.line == 5  # physical lines: the blank line 4 counts but yields nothing
    assert river.body["messages"] == [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Name a river."},
    ]
    assert "system" not in river.body


def test_plain_jsonl_for_anthropic_messages() -> None:
    _, fruit, planet, river = requests(
        DATA / "prompts.jsonl", model="claude-3-5-haiku", endpoint="/v1/messages"
    )
    assert fruit.url == "/v1/messages" and fruit.body["max_tokens"] == 16
    assert planet.body["max_tokens"] == 1024  # Anthropic requires one
    assert river.body["system"] == "Answer in one word."
    assert river.body["messages"] == [{"role": "user", "content": "Name a river."}]


def test_system_messages_are_moved_out_for_anthropic(tmp_path: Path) -> None:
    line = {
        "messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]
    }
    [request] = requests(
        write_lines(tmp_path / "in.jsonl", [line]),
        model="claude-sonnet-4",
        endpoint="messages",
        defaults={"max_tokens": 50},
    )
    assert request.body == {
        "model": "claude-sonnet-4",
        "max_tokens": 50,
        "system": "Be terse.",
        "messages": [{"role": "user", "content": "Hi"}],
    }


def test_a_system_default_becomes_the_first_message(tmp_path: Path) -> None:
    lines = [{"prompt": "a"}, {"messages": [{"role": "system", "content": "own"}, {"role": "user", "content": "b"}]}]  # fmt: skip
    one, two = requests(
        write_lines(tmp_path / "in.jsonl", lines), model="m", defaults={"system": "Be kind."}
    )
    assert one.body["messages"][0] == {"role": "system", "content": "Be kind."}
    assert [m["content"] for m in two.body["messages"]] == ["own", "b"]  # the line's own wins


def test_plain_jsonl_embeddings_take_input_text_or_prompt(tmp_path: Path) -> None:
    lines = [
        {"id": "a", "input": "alpha"},
        {"id": "b", "text": "beta"},
        {"id": "c", "prompt": "gamma", "dimensions": 256},
        {"id": "d", "input": ["x", "y"]},
        {"id": "e", "messages": [{"role": "user", "content": "x"}]},
        {"id": "f", "input": "a", "text": "b"},
    ]
    items = read_all(
        write_lines(tmp_path / "in.jsonl", lines),
        endpoint="/v1/embeddings",
        model="text-embedding-3-small",
        defaults={"max_tokens": 10},
    )
    a, b, c, d, e, f = items
    assert isinstance(a, Request) and isinstance(b, Request) and isinstance(c, Request)
    assert isinstance(d, Request)
    assert [r.body["input"] for r in (a, b, c, d)] == ["alpha", "beta", "gamma", ["x", "y"]]
    assert c.body["dimensions"] == 256
    assert "max_tokens" not in a.body  # generation defaults stay out of embeddings
    assert isinstance(e, InputError) and e.field == "input" and e.custom_id == "e"
    assert isinstance(f, InputError) and f.field == "text" and "give one of" in f.message


@pytest.mark.parametrize(
    ("line", "field", "message"),
    [
        ("{not json", None, "invalid JSON: Expecting property name"),
        ('{"prompt": NaN}', None, "NaN is not valid JSON"),
        ('["a list"]', None, "expected a JSON object, got a list"),
        ('{"id": "x"}', "prompt", 'missing: give "prompt" (a string) or "messages"'),
        ('{"prompt": ""}', "prompt", "expected a non-empty string, got an empty string"),
        ('{"prompt": 3}', "prompt", "expected a non-empty string, got the number 3"),
        ('{"prompt": "a", "messages": []}', "prompt", 'give "prompt" or "messages", not both'),
        ('{"messages": []}', "messages", "expected a non-empty list"),
        ('{"messages": ["hi"]}', "messages[0]", "expected an object with role and content"),
        ('{"id": 1.5, "prompt": "a"}', "id", "expected a non-empty string or an integer"),
        ('{"id": true, "prompt": "a"}', "id", "got true"),
        ('{"prompt": "a", "system": ["x"]}', "system", "expected a string"),
        ('{"prompt": "a", "max_tokens": 0}', "max_tokens", "expected a positive integer"),
        ('{"prompt": "a", "model": 5}', "model", "expected a non-empty string, got the number 5"),
    ],
)
def test_a_bad_plain_line_names_its_field(
    tmp_path: Path, line: str, field: str | None, message: str
) -> None:
    source = write_lines(tmp_path / "in.jsonl", [{"prompt": "ok"}, "", line, {"prompt": "ok too"}])
    first, error, last = read_all(source, format="jsonl", model="m")
    assert isinstance(first, Request) and isinstance(last, Request) and last.line == 4
    assert isinstance(error, InputError) and error.line == 3 and error.field == field
    assert message in error.message, error.message


def test_a_line_without_a_model_needs_one(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "in.jsonl", [{"prompt": "a"}, {"prompt": "b", "model": "m"}])
    error, request = read_all(source)
    assert isinstance(error, InputError) and isinstance(request, Request)
    assert str(error) == f"{source}:1: model: no model: pass --model or give one per line"
    assert read_all(source, defaults={"model": "d"})[0].body["model"] == "d"  # type: ignore[union-attr]


def test_invalid_utf8_and_a_bom(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'\xef\xbb\xbf{"prompt": "a"}\n{"prompt": "\xff"}\n{"prompt": "c"}\n')
    first, error, third = read_all(source, model="m")
    assert isinstance(first, Request) and isinstance(third, Request)
    assert isinstance(error, InputError) and error.line == 2 and "not valid UTF-8" in error.message


def test_batch_lines_in_a_plain_file_are_read_as_batch_lines(tmp_path: Path) -> None:
    # Detection looks at the first line only; a malformed first line must not turn the
    # rest of a batch file into errors.
    source = write_lines(tmp_path / "in.jsonl", ["{oops", chat_line(2)])
    error, request = read_all(source)
    assert isinstance(error, InputError) and isinstance(request, Request)
    assert request.custom_id == "c2"


# -- CSV ----------------------------------------------------------------------------------


def test_csv_with_a_prompt_column_and_an_id_column() -> None:
    r1, r2, r3 = requests(DATA / "articles.csv", model="m", prompt_column="text", id_column="id")
    assert [r.custom_id for r in (r1, r2, r3)] == ["r1", "r2", "r3"]
    assert [r.line for r in (r1, r2, r3)] == [2, 3, 6]  # a row's first physical line
    assert r2.body["messages"] == [{"role": "user", "content": "A text\nover two lines."}]


def test_csv_with_a_template_for_embeddings() -> None:
    r1, _, r3 = requests(
        DATA / "articles.csv",
        model="text-embedding-3-small",
        endpoint="/v1/embeddings",
        template="[{lang}] {text}",
    )
    assert r1.body == {"input": "[en] A short text.", "model": "text-embedding-3-small"}
    assert r3.body["input"] == "[fr] Un texte court."
    assert r1.custom_id.startswith("line-2-")


def test_tsv_bom_and_bad_rows(tmp_path: Path) -> None:
    source = tmp_path / "in.tsv"
    source.write_bytes("\ufeffname\tq\na\tWhat is 1+1?\nb\t\nc\tx\textra\nd\tWhy?\n".encode())
    a, empty, extra, d = read_all(source, model="m", prompt_column="q", id_column="name")
    assert isinstance(a, Request) and a.custom_id == "a"  # the BOM is not part of "name"
    assert isinstance(empty, InputError) and (empty.line, empty.field) == (3, "q")
    assert empty.message == "empty prompt" and empty.custom_id == "b"
    assert isinstance(extra, InputError) and extra.line == 4
    assert "expected 2 fields (as in the header), found 3" in extra.message
    assert isinstance(d, Request) and d.line == 5


def test_csv_template_errors_are_per_row(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("id,score\na,0.5\nb,\n")
    ok, bad = read_all(source, model="m", template="Score: {score:.1f}", id_column="id")
    # CSV values are strings, so a numeric format spec fails on every row, with a reason.
    assert isinstance(ok, InputError) and ok.field == "template" and "cannot render" in ok.message
    assert isinstance(bad, InputError) and bad.custom_id == "b"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"prompt_column": "body"},
            "no column 'body' (named by --prompt-column); the columns are: 'id', 'text', 'lang'",
        ),
        ({"prompt_column": "Text"}, "Did you mean 'text'?"),
        ({"template": "Summarize: {content}"}, "no column 'content' (named by --template)"),
        ({"template": "{text}", "id_column": "key"}, "no column 'key' (named by --id-column)"),
        ({}, "HINT: pass --prompt-column COLUMN or --template"),
        ({"prompt_column": "text", "template": "{text}"}, "both given; pass one"),
        ({"template": "Summarize: {}"}, "positional field"),
        ({"template": "Summarize"}, "names no column"),
        ({"template": "Summarize {text"}, "bad --template"),
        ({"prompt_column": "text", "model": None}, "no model"),
        ({"prompt_column": "text", "format": "xml"}, "unknown format 'xml'"),
        ({"prompt_column": "text", "endpoint": "/v1/responses"}, "unknown endpoint"),
    ],
)
def test_a_csv_that_cannot_run_stops_before_the_first_request(
    options: dict[str, Any], message: str
) -> None:
    options = {"model": "m", **options}
    with pytest.raises(JobInputError) as caught:
        read_requests(str(DATA / "articles.csv"), **options)  # raises on the call itself
    assert message in str(caught.value)


@pytest.mark.parametrize("content", ["", "\n\n", " \r\n"])
@pytest.mark.parametrize(
    "options",
    [{"model": "m", "prompt_column": "text"}, {}, {"format": "csv", "model": "m"}],
)
def test_an_empty_csv_is_an_empty_input_as_an_empty_jsonl_is(
    tmp_path: Path, content: str, options: dict[str, Any]
) -> None:
    (tmp_path / "empty.csv").write_text(content)
    (tmp_path / "empty.jsonl").write_text(content)
    assert read_all(tmp_path / "empty.csv", **options) == []
    assert read_all(tmp_path / "empty.jsonl", **options) == []
    check_input(str(tmp_path / "empty.csv"), **options)  # nothing to refuse either


def test_an_empty_csv_on_stdin_is_an_empty_input(monkeypatch: pytest.MonkeyPatch) -> None:
    use_stdin(monkeypatch, b"\n")
    assert read_all("-", format="csv", model="m", prompt_column="text") == []
    use_stdin(monkeypatch, b"")
    assert read_all("-", format="csv", model="m", prompt_column="text") == []


def test_a_csv_with_only_a_header_is_empty_but_still_checked(tmp_path: Path) -> None:
    (tmp_path / "header.csv").write_text("text\n")
    assert read_all(tmp_path / "header.csv", model="m", prompt_column="text") == []
    with pytest.raises(JobInputError, match="no column 'body'"):
        read_requests(str(tmp_path / "header.csv"), model="m", prompt_column="body")


def test_a_csv_that_is_not_utf8_stops(tmp_path: Path) -> None:
    (tmp_path / "latin.csv").write_bytes("text\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(JobInputError, match=r"latin.csv:2: not valid UTF-8"):
        read_all(tmp_path / "latin.csv", model="m", prompt_column="text")


# -- Parquet ------------------------------------------------------------------------------


def write_parquet(path: Path, columns: dict[str, list[Any]], row_group_size: int = 2) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def test_parquet_rows_through_a_template(tmp_path: Path) -> None:
    source = write_parquet(
        tmp_path / "docs.parquet",
        {"doc": [10, 11, 12, 13, 14], "title": ["A", "B", None, "D", "E"], "n": [1, 2, 3, 4, 5]},
    )
    items = read_all(source, model="m", template="{title} (#{n:03d})", id_column="doc")
    assert [i.line for i in items] == [1, 2, 3, 4, 5]  # 1-based rows across row groups
    first, null = items[0], items[2]
    assert isinstance(first, Request) and first.custom_id == "10"
    assert first.body["messages"][0]["content"] == "A (#001)"  # numbers keep their type
    assert isinstance(null, InputError) and (null.field, null.message) == (
        "title",
        "missing value (null)",
    )


def test_parquet_found_by_content_and_missing_columns(tmp_path: Path) -> None:
    source = write_parquet(tmp_path / "docs.bin", {"text": ["a", "b"]})
    assert detect_format(str(source)) == "parquet"
    a, b = requests(source, model="m", prompt_column="text")
    assert a.custom_id != b.custom_id and a.custom_id.startswith("line-1-")
    with pytest.raises(JobInputError, match=r"no column 'body' .* the columns are: 'text'"):
        read_requests(str(source), model="m", prompt_column="body")


def test_a_broken_parquet_file(tmp_path: Path) -> None:
    (tmp_path / "x.parquet").write_bytes(b"PAR1 certainly not parquet")
    with pytest.raises(JobInputError, match=r"x.parquet: not a readable Parquet file"):
        read_requests(str(tmp_path / "x.parquet"), model="m", prompt_column="text")


# -- detection and unreadable inputs ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [("a.parquet", "parquet"), ("a.CSV", "csv"), ("a.tsv", "csv"), ("a.jsonl", "jsonl"),
     ("a.json", "jsonl"), ("a.ndjson", "jsonl")],
)  # fmt: skip
def test_detect_by_extension(tmp_path: Path, name: str, expected: str) -> None:
    (tmp_path / name).write_text('{"prompt": "x"}\n')
    assert detect_format(str(tmp_path / name)) == expected


def test_detect_by_content(tmp_path: Path) -> None:
    assert detect_format(str(DATA / "batch.jsonl")) == "batch"
    assert detect_format(str(DATA / "prompts.jsonl")) == "jsonl"
    (tmp_path / "input.txt").write_text('\n{"prompt": "x"}\n')
    assert detect_format(str(tmp_path / "input.txt")) == "jsonl"
    assert detect_format("-", json.dumps(chat_line(1))) == "batch"
    assert detect_format("-", '{"messages": []}') == "jsonl"
    with pytest.raises(JobInputError) as caught:
        detect_format("-", "id,text")
    assert "<stdin>: cannot tell the format" in str(caught.value)
    assert "batch (OpenAI Batch JSONL" in str(caught.value) and "parquet" in str(caught.value)
    (tmp_path / "array.json").write_text('[\n  {"prompt": "x"}\n]\n')
    with pytest.raises(JobInputError, match="a JSON array, not JSON Lines"):
        detect_format(str(tmp_path / "array.json"))
    with pytest.raises(JobInputError, match="empty"):
        detect_format("-", None)


def test_stdin_is_detected_from_its_first_line(monkeypatch: pytest.MonkeyPatch) -> None:
    use_stdin(monkeypatch, b"\n" + json.dumps(chat_line(1)).encode() + b"\n")
    [request] = requests("-")
    assert (request.custom_id, request.line) == ("c1", 2)  # the peeked line is not lost
    use_stdin(monkeypatch, b'{"prompt": "a"}\n{"prompt": "b"}\n')
    items = read_all("-", model="m")
    assert [i.line for i in items] == [1, 2]
    assert all(isinstance(i, InputError) or i.url == "/v1/chat/completions" for i in items)


def test_stdin_as_csv_and_not_as_parquet(monkeypatch: pytest.MonkeyPatch) -> None:
    use_stdin(monkeypatch, b"id,text\n1,hello\n2,world\n")
    one, two = requests("-", format="csv", model="m", prompt_column="text", id_column="id")
    assert (one.custom_id, one.line, two.line) == ("1", 2, 3)
    # It was read, all of it: what is left is an empty input.
    assert read_all("-", format="csv", model="m", prompt_column="text") == []
    with pytest.raises(JobInputError, match="Parquet cannot be read from stdin"):
        read_requests("-", format="parquet", model="m", prompt_column="text")


def test_unreadable_paths(tmp_path: Path) -> None:
    with pytest.raises(JobInputError) as caught:
        read_requests(str(tmp_path / "nope.jsonl"))
    assert str(caught.value) == f"{tmp_path / 'nope.jsonl'}: cannot read: No such file or directory"
    with pytest.raises(JobInputError, match="cannot read: No such file"):
        read_requests(str(tmp_path / "nope.csv"), format="csv", model="m", prompt_column="t")
    with pytest.raises(JobInputError, match="cannot read: Is a directory"):
        read_requests(str(tmp_path))


# -- ids ----------------------------------------------------------------------------------


def test_derived_ids_are_stable_and_positional(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "in.jsonl", [{"prompt": "same"}, {"prompt": "same"}])
    first = [r.custom_id for r in requests(source, model="a")]
    again = [r.custom_id for r in requests(source, model="b", defaults={"max_tokens": 9})]
    assert first == again  # flags do not change ids: the journal sees the changed bodies
    assert first[0] != first[1]  # identical content, different lines
    digest = hashlib.sha256(b'{"prompt":"same"}').hexdigest()[:12]
    assert first == [f"line-1-{digest}", f"line-2-{digest}"]
    assert derived_id(1, {"prompt": "same"}) == first[0]


def test_csv_ids_follow_the_columns_used(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("text,note\nhello,one\nhello,two\n")
    one, two = requests(source, model="m", prompt_column="text")
    assert one.custom_id == derived_id(2, {"text": "hello"})
    assert two.custom_id == derived_id(3, {"text": "hello"})


# -- streaming ----------------------------------------------------------------------------


class LineStream(io.RawIOBase):
    """A stdin that makes its lines as it is read: nothing holds the whole input."""

    def __init__(self, lines: Iterator[bytes]) -> None:
        self._lines = lines
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            line = next(self._lines, None)
            if line is None:
                return 0
            self._pending = line
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def peak_while_reading(items: Iterator[Request | InputError]) -> tuple[int, int]:
    tracemalloc.start()
    try:
        count = sum(1 for _ in items)
        return count, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_large_jsonl_stream_is_read_in_constant_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    # tracemalloc slows allocation-heavy code ~7x; 40k lines keep this test near 3 s
    # while a reader that kept its lines (~40 MB of Requests) would fail it by far.
    n = 40_000
    lines = (b'{"prompt": "Question %d: name a colour.", "max_tokens": 16}\n' % i for i in range(n))
    use_stdin(monkeypatch, LineStream(lines))
    count, peak = peak_while_reading(read_requests("-", model="sim-small"))
    assert count == n
    assert peak < 500_000, f"peak {peak:,} bytes"  # the input is ~2.4 MB


def test_a_large_csv_stream_is_read_in_constant_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    n = 20_000
    rows = (b"%d,Document number %d is about nothing much.\n" % (i, i) for i in range(n))
    use_stdin(monkeypatch, LineStream(itertools.chain([b"id,text\n"], rows)))
    count, peak = peak_while_reading(
        read_requests("-", format="csv", model="m", template="Summarize: {text}", id_column="id")
    )
    assert count == n
    assert peak < 500_000, f"peak {peak:,} bytes"  # the input is ~1 MB


def test_an_empty_input_yields_nothing_whatever_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("empty", "empty.jsonl", "empty.txt"):
        (tmp_path / name).write_text("\n \n")
        assert list(read_requests(str(tmp_path / name))) == []
        check_input(str(tmp_path / name))
    use_stdin(monkeypatch, b"\n\n")
    assert list(read_requests("-")) == []
    (tmp_path / "words").write_text("not json\n")
    with pytest.raises(JobInputError, match="cannot tell the format"):
        check_input(str(tmp_path / "words"))


def test_check_input_refuses_what_read_requests_would_without_reading_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_stdin(monkeypatch, b'{"prompt": "kept for the run"}\n')
    with pytest.raises(JobInputError, match="unknown format 'xml'"):
        check_input("-", format="xml")  # type: ignore[arg-type]
    with pytest.raises(JobInputError, match="Parquet cannot be read from stdin"):
        check_input("-", format="parquet")
    check_input("-")
    [request] = list(read_requests("-", model="m"))  # stdin is still whole
    assert request.body["messages"][0]["content"] == "kept for the run"
    with pytest.raises(JobInputError, match="no model"):
        check_input(str(DATA / "articles.csv"), prompt_column="text")
