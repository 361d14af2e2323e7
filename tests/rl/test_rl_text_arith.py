"""The word-problem task: GSM8k answer parsing, the reward, seeded disjoint splits."""

from __future__ import annotations

import pytest

from surge.rl import extract_answer, gsm8k_reward, word_problems


@pytest.mark.parametrize(
    ("completion", "reward"),
    [
        (" 3 + 4 = 7 #### 7", 1.0),  # correct
        (" #### 7", 1.0),
        ("#### 1,007", 0.0 + 0.1),  # well-formed, wrong (1007 != 7)
        (" #### 8", 0.1),  # wrong
        (" #### -7", 0.1),
        (" #### seven", 0.0),  # malformed: no number after ####
        (" ####", 0.0),
        (" #### 7 apples", 0.0),  # malformed: the answer must end the completion
        (" the answer is 7", 0.0),  # missing ####
        ("", 0.0),
    ],
)
def test_reward_for_correct_wrong_malformed_and_missing(completion: str, reward: float) -> None:
    assert gsm8k_reward("Ann has 3 pens and gets 4 more.", completion, answer="7") == reward


def test_the_answer_column_may_be_a_full_gsm8k_solution() -> None:
    solution = "She had 3, then 3 + 4 = 7.\n#### 7"
    assert gsm8k_reward("q", " #### 7", answer=solution) == 1.0
    assert gsm8k_reward("q", " #### 1,234", answer="1234") == 1.0


def test_extract_answer_takes_the_last_marker() -> None:
    assert extract_answer("#### 3 then #### 5") == "5"
    assert extract_answer("no marker") is None
    assert extract_answer("#### 2.5") == "2.5"


def test_word_problems_are_seeded_distinct_and_splits_disjoint() -> None:
    train = word_problems(300, seed=0)
    assert train == word_problems(300, seed=0)
    assert train != word_problems(300, seed=1)
    assert len({r["prompt"] for r in train}) == 300
    held_out = word_problems(100, seed=1, exclude=train)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held_out}
    for row in train[:50]:
        assert gsm8k_reward(row["prompt"], f" #### {row['answer']}", answer=row["answer"]) == 1.0


def test_word_problems_refuse_what_cannot_be_drawn() -> None:
    with pytest.raises(ValueError, match="HINT"):
        word_problems(10_000, max_operand=1, kinds=("add",))
    with pytest.raises(ValueError, match="HINT"):
        word_problems(5, kinds=("divide",))
