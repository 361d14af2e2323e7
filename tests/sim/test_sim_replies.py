"""The pure functions a client uses to predict the simulator: tokens, replies, plans."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from surge.sim import (
    PROFILES,
    Faults,
    Latency,
    SimConfig,
    content_key,
    count_tokens,
    embedding_vector,
    expected_reply,
    format_duration,
    parse_duration,
    plan,
    request_cost,
)

texts = st.text(max_size=200)


def chat(text: str, **extra: object) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], **extra}


def test_count_tokens_is_ceil_chars_over_four_per_piece() -> None:
    body = {
        "system": "abcde",  # 2
        "messages": [
            {"role": "user", "content": "abcd"},  # 1
            {"role": "user", "content": [{"type": "text", "text": "abcdefghi"}]},  # 3
        ],
    }
    assert count_tokens(body) == 6
    assert count_tokens({"input": ["a", "abcdefgh"]}) == 3
    assert count_tokens({"input": [1, 2, 3]}) == 3
    assert count_tokens({"input": [[1, 2], [3]]}) == 3


def test_request_cost_adds_max_tokens_or_the_default() -> None:
    assert request_cost(chat("abcd", max_tokens=10)) == 11
    assert request_cost(chat("abcd", max_completion_tokens=7, max_tokens=99)) == 8
    assert request_cost(chat("abcd")) == 1 + 256
    assert request_cost({"input": "abcdefgh"}) == 2


def test_content_key_ignores_options_but_not_content() -> None:
    assert content_key(chat("x", max_tokens=3, model="a")) == content_key(chat("x", model="b"))
    assert content_key(chat("x")) != content_key(chat("y"))
    assert len(content_key(chat("x"))) == 16


@given(texts, st.integers(min_value=0, max_value=60))
def test_reply_respects_max_tokens_and_names_its_input(text: str, max_tokens: int) -> None:
    body = chat(text, max_tokens=max_tokens)
    reply = expected_reply(body)
    full = expected_reply(chat(text))
    assert reply.output_tokens <= max_tokens
    assert reply.words == full.words[: reply.output_tokens]
    assert reply.finish_reason == ("length" if max_tokens < full.output_tokens else "stop")
    assert 10 <= full.output_tokens <= 40
    if max_tokens:
        assert reply.words[0] == f"sim-{content_key(body)[:8]}"


@given(texts, st.integers(min_value=1, max_value=64))
def test_embedding_vectors_are_deterministic_unit_vectors(text: str, dim: int) -> None:
    vector = embedding_vector(text, dim)
    assert len(vector) == dim
    assert math.isclose(sum(x * x for x in vector), 1.0, rel_tol=1e-9)
    assert vector == embedding_vector(text, dim)


@given(st.floats(min_value=0, max_value=20_000, allow_nan=False))
def test_durations_round_trip_rounded_up_to_the_millisecond(seconds: float) -> None:
    parsed = parse_duration(format_duration(seconds))
    assert seconds - 1e-6 <= parsed <= seconds + 0.001 + 1e-6


def test_duration_formats_match_openai() -> None:
    assert [format_duration(s) for s in (0, 0.02, 1.5, 59.999, 60, 360, 3725.25)] == [
        "0s", "20ms", "1.5s", "59.999s", "1m0s", "6m0s", "1h2m5.25s",
    ]  # fmt: skip
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_plan_is_a_pure_function_of_seed_content_and_attempt() -> None:
    cfg = SimConfig(seed=3, latency=Latency(ttft=0.2, jitter=0.5), faults=Faults(error_500=0.5))
    bodies = [chat(str(i)) for i in range(200)]
    first = [plan(b, config=cfg) for b in bodies]
    assert first == [plan(b, config=cfg) for b in bodies]
    assert first != [plan(b, config=cfg.replace(seed=4)) for b in bodies]
    assert [plan(b, attempt=1, config=cfg) for b in bodies] != first
    faults = sum(p.fault == "500" for p in first)
    assert 70 < faults < 130  # about half
    assert len({p.ttft for p in first}) > 150  # jittered


def test_fault_kinds_follow_their_probabilities() -> None:
    cfg = SimConfig(faults=Faults.uniform_5xx(0.3, hang=0.1, reset=0.1, malformed=0.1, slow=0.1))
    fates = [plan(chat(str(i)), config=cfg).fault for i in range(3000)]
    for kind, p in cfg.faults.probabilities().items():
        assert abs(fates.count(kind) / 3000 - p) < 0.03, kind
    assert abs(fates.count(None) / 3000 - 0.3) < 0.03


def test_typical_profile_matches_the_seven_call_benchmark() -> None:
    # Sequential 7 calls took ~6.2 s and gather ~0.85 s in the published benchmark.
    cfg = PROFILES["typical"]
    bodies = [chat(f"Summarize topic {i} in 5 words") for i in range(7)]
    totals = [plan(b, config=cfg).total(expected_reply(b).output_tokens) for b in bodies]
    assert 4.5 < sum(totals) < 7.5
    assert 0.6 < max(totals) < 1.3


def test_config_validation_says_how_to_fix() -> None:
    with pytest.raises(ValueError, match="HINT"):
        SimConfig(rpm=0)
    with pytest.raises(ValueError, match="HINT"):
        Faults(hang=0.7, reset=0.7)
    with pytest.raises(ValueError, match="HINT"):
        Latency(ttft=-1)
    assert SimConfig(api_keys={"a"}).api_keys == frozenset({"a"})  # type: ignore[arg-type]
    assert SimConfig().replace(faults={"hang": 0.5}).faults.hang == 0.5
