"""Verifiable tasks: a prompt sampler plus a reward function, nothing else.

A task is what the generator asks and the reward model checks. Keeping it this small lets
the trainer stay agnostic of what is being learned, and lets tests swap in tasks with
deliberately uneven generation lengths.
"""

from __future__ import annotations

import random
from typing import Protocol, runtime_checkable

__all__ = ["ReverseDigits", "Task"]


@runtime_checkable
class Task(Protocol):
    """What the trainer needs from a task.

    Prompts may differ in length: batches are then left-padded with ``pad_id`` and the
    model is called with ``attention_mask`` and ``position_ids`` (``HFCausalLM`` takes
    them; ``TinyLM`` needs prompts of one length, as ``ReverseDigits`` draws them).
    Completions end at ``eos_id`` or after ``max_new_tokens``. ``vocab_size`` is the
    width of the model's logits. :class:`~surge.rl.TextTask` builds one from rows of text.
    """

    vocab_size: int
    max_new_tokens: int
    eos_id: int
    pad_id: int

    def sample_prompt(self, rng: random.Random) -> list[int]:
        """A fresh prompt (token ids), drawn from ``rng`` only."""
        ...

    def reward(self, prompt: list[int], completion: list[int]) -> float:
        """Score of ``completion`` (without the EOS and padding) for ``prompt``."""
        ...


class ReverseDigits:
    """Reverse a string of digits, with partial credit per correct position.

    Prompt: ``BOS d1 .. dn SEP``; the answer is ``dn .. d1 EOS``. The reward is the
    fraction of the ``n`` positions answered correctly, so a policy improves smoothly
    from chance (about 0.1) to 1.0 — a signal dense enough for a tiny model to learn
    from within minutes on a CPU.

    Example::

        task = ReverseDigits(length=5)
        task.reward(task.encode("12345"), task.encode_answer("54321"))  # 1.0
    """

    BOS = 10
    SEP = 11
    EOS = 12
    PAD = 13

    def __init__(self, *, length: int = 5, digits: int = 10) -> None:
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        if not 2 <= digits <= 10:
            raise ValueError(f"digits must be in [2, 10], got {digits}")
        self.length = length
        self.digits = digits
        self.vocab_size = 14
        self.prompt_len = length + 2
        self.max_new_tokens = length + 1
        self.eos_id = self.EOS
        self.pad_id = self.PAD

    def sample_prompt(self, rng: random.Random) -> list[int]:
        body = [rng.randrange(self.digits) for _ in range(self.length)]
        return [self.BOS, *body, self.SEP]

    def reward(self, prompt: list[int], completion: list[int]) -> float:
        target = prompt[1:-1][::-1]
        hits = sum(1 for got, want in zip(completion, target, strict=False) if got == want)
        return hits / self.length

    def encode(self, digits: str) -> list[int]:
        """Prompt tokens for a digit string such as ``"12345"``."""
        return [self.BOS, *(int(c) for c in digits), self.SEP]

    def encode_answer(self, digits: str) -> list[int]:
        return [int(c) for c in digits]

    def decode(self, tokens: list[int]) -> str:
        names = {self.BOS: "^", self.SEP: "|", self.EOS: "$", self.PAD: "."}
        return "".join(names.get(t, str(t)) for t in tokens)
