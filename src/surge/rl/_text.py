"""Text tasks: rows of prompts, any Hugging Face tokenizer, a reward on decoded text.

A :class:`TextTask` turns a dataset (a list of dicts, a JSONL or Parquet file, a
``datasets`` object) into the token-level :class:`~surge.rl.Task` the generator and
trainer already drive: prompts of any length, completions that end at the tokenizer's
EOS, and ``reward(prompt, completion_text, **row)`` called on the decoded completion with
the rest of the row (the answer column, say) as keyword arguments, as TRL's reward
functions receive their dataset columns.

Prompts of different lengths are left-padded within a batch, with an attention mask and
position ids that count only real tokens, so a prompt's log-probabilities do not depend on
what it was batched with (:func:`completion_logprobs`).
"""

from __future__ import annotations

import inspect
import json
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from surge.rl._device import model_device
from surge.rl._errors import RLError

__all__ = [
    "TextTask",
    "completion_logprobs",
    "left_pad",
    "load_rows",
    "model_logits",
    "train_tokenizer",
]

RewardFn = Callable[..., float]
"""``reward(prompt, completion_text, **row) -> float``."""

# A chat template for tokenizers trained here: plain role lines, the assistant's turn
# opened at the end (what ``add_generation_prompt`` asks for).
SIMPLE_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def train_tokenizer(
    texts: Iterable[str],
    *,
    vocab_size: int = 512,
    eos_token: str = "<|endoftext|>",
    pad_token: str = "<|pad|>",
    chat_template: str | None = None,
) -> Any:
    """A byte-level BPE tokenizer trained on ``texts``, here, with no download.

    Returns a ``transformers.PreTrainedTokenizerFast`` (the object every HF tokenizer
    is), with ``pad_token`` at id 0 and ``eos_token`` at id 1. Byte-level means any text
    encodes, including characters the training texts never showed.

    Example::

        tok = train_tokenizer(row["prompt"] + " #### " + row["answer"] for row in rows)
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 258:
        raise ValueError(
            f"vocab_size must be >= 258, got {vocab_size}. HINT: a byte-level tokenizer "
            "needs the 256 bytes plus the pad and EOS tokens."
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[pad_token, eos_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    hf = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, eos_token=eos_token, pad_token=pad_token
    )
    if chat_template is not None:
        hf.chat_template = chat_template
    return hf


# -- data --------------------------------------------------------------------------------


def load_rows(
    source: str | Path | Sequence[Mapping[str, Any]] | Any,
    *,
    columns: Sequence[str] = ("prompt",),
) -> list[dict[str, Any]]:
    """Rows of a dataset as plain dicts, checked for ``columns``.

    ``source`` is a ``.jsonl`` or ``.parquet`` path, a list of dicts, or anything that
    iterates over dict rows (a Hugging Face ``datasets.Dataset``). A missing column is
    reported with the file and line (or row index) it is missing from.
    """
    where = str(source) if isinstance(source, (str, Path)) else type(source).__name__
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise RLError(f"{path}: no such file. HINT: check the dataset path.")
        if path.suffix == ".jsonl":
            rows = _read_jsonl(path)
        elif path.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        else:
            raise RLError(
                f"{path}: unknown dataset format {path.suffix!r}. HINT: use .jsonl or .parquet."
            )
        unit = "line"
    else:
        rows = [dict(r) for r in source]
        unit = "row"
    if not rows:
        raise RLError(f"{where}: the dataset is empty. HINT: it needs at least one row.")
    for i, row in enumerate(rows):
        missing = [c for c in columns if c not in row]
        if missing:
            number = i + 1 if unit == "line" else i
            raise RLError(
                f"{where}, {unit} {number}: missing column {missing[0]!r} (has "
                f"{sorted(row)}). HINT: every row needs the columns {list(columns)}."
            )
    return rows


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RLError(
                    f"{path}, line {number}: not valid JSON ({exc.msg}). HINT: one JSON "
                    "object per line."
                ) from None
            if not isinstance(row, dict):
                raise RLError(f"{path}, line {number}: expected a JSON object per line.")
            rows.append(row)
    return rows


# -- the task ----------------------------------------------------------------------------


def _token_id(tokenizer: Any, name: str) -> int | None:
    value = getattr(tokenizer, f"{name}_token_id", None)
    return int(value) if isinstance(value, int) else None


class TextTask:
    """A dataset of prompts plus a reward on the decoded completion: a :class:`Task`.

    ``rows`` hold a ``prompt_column`` (text, or chat messages as a list of
    ``{"role", "content"}`` dicts) and any other columns; ``reward(prompt,
    completion_text, **other_columns)`` scores a completion. Where the tokenizer has a
    chat template it is applied (with the assistant's turn opened), text prompts being
    one user message; ``chat_template=False`` feeds text prompts as they are.

    Example::

        rows = [{"prompt": "2 + 3 =", "answer": "5"}, ...]
        def reward(prompt, completion, answer):
            return float(completion.strip() == answer)
        task = TextTask(rows, tokenizer, reward, max_new_tokens=8)

    Sampling draws rows uniformly with the generator's seeded RNG. Rows with the same
    encoded prompt are one question: the reward sees the first of them. For
    ``engine="process"`` the reward must be picklable (a module-level function).
    """

    def __init__(
        self,
        rows: Sequence[Mapping[str, Any]] | str | Path | Any,
        tokenizer: Any,
        reward: RewardFn,
        *,
        max_new_tokens: int = 64,
        prompt_column: str = "prompt",
        chat_template: bool = True,
        success_threshold: float = 1.0,
    ) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not callable(reward):
            raise TypeError("reward must be callable: reward(prompt, completion_text, **row)")
        self.rows = load_rows(rows, columns=(prompt_column,))
        self.tokenizer = tokenizer
        self.reward_fn = reward
        self.prompt_column = prompt_column
        self.max_new_tokens = max_new_tokens
        self.success_threshold = success_threshold
        eos = _token_id(tokenizer, "eos")
        if eos is None:
            raise RLError(
                "the tokenizer has no eos_token_id. HINT: set tokenizer.eos_token (the "
                "token that ends a completion)."
            )
        self.eos_id = eos
        pad = _token_id(tokenizer, "pad")
        self.pad_id = eos if pad is None else pad  # as TRL does for tokenizers without one
        self.vocab_size = len(tokenizer)
        self._template = chat_template and bool(getattr(tokenizer, "chat_template", None))
        self.prompt_ids = [self.encode_prompt(row[prompt_column]) for row in self.rows]
        self.prompt_len = max(len(p) for p in self.prompt_ids)
        self._row_of: dict[tuple[int, ...], int] = {}
        for i, ids in enumerate(self.prompt_ids):
            self._row_of.setdefault(tuple(ids), i)

    def __len__(self) -> int:
        return len(self.rows)

    def prompt_text(self, prompt: str | Sequence[Mapping[str, str]]) -> str:
        """The text the model sees for a prompt, chat template applied where there is one."""
        if isinstance(prompt, str) and not self._template:
            return prompt
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        if self._template:
            text: str = self.tokenizer.apply_chat_template(
                list(messages), add_generation_prompt=True, tokenize=False
            )
            return text
        # Messages but no template: the same plain role lines the local template writes.
        lines = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
        return lines + "assistant:"

    def encode_prompt(self, prompt: str | Sequence[Mapping[str, str]]) -> list[int]:
        ids = _encode(self.tokenizer, self.prompt_text(prompt))
        if not ids:
            raise RLError(f"prompt {prompt!r} encodes to no tokens. HINT: drop empty prompts.")
        return ids

    def decode(self, completion: Sequence[int]) -> str:
        text: str = self.tokenizer.decode(list(completion), skip_special_tokens=True)
        return text

    def sample_prompt(self, rng: random.Random) -> list[int]:
        return list(self.prompt_ids[rng.randrange(len(self.rows))])

    def row_of(self, prompt: Sequence[int]) -> dict[str, Any]:
        try:
            return self.rows[self._row_of[tuple(prompt)]]
        except KeyError:
            raise RLError("prompt is not one of this task's rows") from None

    def score(self, row: Mapping[str, Any], completion_text: str) -> float:
        extra = {k: v for k, v in row.items() if k != self.prompt_column}
        return float(self.reward_fn(row[self.prompt_column], completion_text, **extra))

    def reward(self, prompt: list[int], completion: list[int]) -> float:
        return self.score(self.row_of(prompt), self.decode(completion))

    def split(self, rows: Sequence[Mapping[str, Any]] | str | Path | Any) -> TextTask:
        """The same tokenizer, reward and settings over other rows (a held-out split)."""
        return TextTask(
            rows,
            self.tokenizer,
            self.reward_fn,
            max_new_tokens=self.max_new_tokens,
            prompt_column=self.prompt_column,
            chat_template=self._template,
            success_threshold=self.success_threshold,
        )


def _encode(tokenizer: Any, text: str) -> list[int]:
    out = tokenizer.encode(text, add_special_tokens=False)
    ids = out.ids if hasattr(out, "ids") else out  # a raw `tokenizers.Tokenizer`
    return [int(i) for i in ids]


# -- padded batches ----------------------------------------------------------------------


def left_pad(
    prompts: Sequence[Sequence[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prompts as one ``[N, P]`` tensor, left-padded, and the attention mask.

    The mask is None when every prompt has the same length: nothing is padded, and
    models that take no mask (``TinyLM``) keep working.
    """
    width = max(len(p) for p in prompts)
    if all(len(p) == width for p in prompts):
        return torch.tensor([list(p) for p in prompts], dtype=torch.long), None
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        if p:
            ids[i, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
            mask[i, width - len(p) :] = 1
    return ids, mask


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count real tokens only: a left-padded row starts at 0 like an
    unpadded one."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _takes_mask(model: nn.Module) -> bool:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return "attention_mask" in params


def model_logits(
    model: nn.Module, tokens: torch.Tensor, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """``model(tokens)`` logits, with the mask and position ids when there is padding."""
    if attention_mask is None:
        out: torch.Tensor = model(tokens)
        return out
    if not _takes_mask(model):
        raise RLError(
            f"{type(model).__name__} takes no attention_mask, and these prompts have "
            "different lengths. HINT: use HFCausalLM (or a model whose forward takes "
            "attention_mask and position_ids) for variable-length prompts."
        )
    out = model(tokens, attention_mask=attention_mask, position_ids=position_ids(attention_mask))
    return out


def completion_logprobs(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    completions: torch.Tensor,
    pad_id: int,
    *,
    entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probabilities of ``completions`` ``[N, T]`` after each prompt.

    One forward pass over the left-padded prompts and the completions (right-padded
    after EOS: those positions come after every real token, so causal attention keeps
    them from changing it). With ``entropy`` also the policy's entropy at each position,
    detached (a diagnostic).
    """
    prompt_ids, prompt_mask = left_pad(prompts, pad_id)
    p = prompt_ids.shape[1]
    tokens = torch.cat([prompt_ids.to(completions.device), completions], dim=1)
    mask = None
    if prompt_mask is not None:
        ones = torch.ones_like(completions, dtype=torch.long)
        mask = torch.cat([prompt_mask.to(completions.device), ones], dim=1)[:, :-1]
    logits = model_logits(model, tokens[:, :-1], mask)[:, p - 1 :]
    logp_all = torch.log_softmax(logits.float(), dim=-1)
    logp = logp_all.gather(-1, tokens[:, p:].unsqueeze(-1)).squeeze(-1)
    ent = None
    if entropy:
        with torch.no_grad():
            ent = -(logp_all.exp() * logp_all).sum(-1)
    return logp, ent


class IncrementalDecoder:
    """Next-token logits for a batch of (possibly left-padded) prompts, one token at a
    time: ``prefill``/``decode`` with a key/value cache when the model has them, the
    whole sequence through ``forward`` otherwise.

    The generator samples through it and :func:`greedy_completions` evaluates through it,
    so both see a padded batch the same way.
    """

    def __init__(
        self, model: nn.Module, prompts: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> None:
        self.model = model
        self.seq = prompts
        self.mask = attention_mask
        self._prefill: Any = getattr(model, "prefill", None)
        self._decode: Any = getattr(model, "decode", None)
        self.incremental = callable(self._prefill) and callable(self._decode)
        takes_mask = self.incremental and (
            "attention_mask" in inspect.signature(self._prefill).parameters  # type: ignore[arg-type]
        )
        if self.incremental and attention_mask is not None and not takes_mask:
            raise RLError(
                f"{type(model).__name__}.prefill takes no attention_mask, and these "
                "prompts have different lengths. HINT: use HFCausalLM (or a model whose "
                "prefill takes attention_mask) for variable-length prompts."
            )
        self._cache: Any = None

    def logits(self) -> torch.Tensor:
        """Raw logits ``[N, V]`` for the position after the last token."""
        if not self.incremental:
            return model_logits(self.model, self.seq, self.mask)[:, -1]
        if self._cache is None:
            if self.mask is None:
                raw, self._cache = self._prefill(self.seq)
            else:
                raw, self._cache = self._prefill(self.seq, attention_mask=self.mask)
        else:
            raw, self._cache = self._decode(self.seq[:, -1], self._cache)
        out: torch.Tensor = raw
        return out

    def append(self, token: torch.Tensor) -> None:
        self.seq = torch.cat([self.seq, token[:, None]], dim=1)
        if self.mask is not None and not self.incremental:
            self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)


@torch.no_grad()
def greedy_completions(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    batch_size: int = 64,
) -> list[list[int]]:
    """Greedy completions (without EOS) of ``prompts``: what held-out evaluation scores."""
    dev = model_device(model)
    was_training = model.training
    model.eval()
    out: list[list[int]] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            ids, mask = left_pad(chunk, pad_id)
            dec = IncrementalDecoder(model, ids.to(dev), None if mask is None else mask.to(dev))
            rows: list[list[int]] = [[] for _ in chunk]
            alive = [True] * len(chunk)
            for _ in range(max_new_tokens):
                tok = dec.logits().float().argmax(dim=-1)
                for r, t in enumerate(tok.tolist()):
                    if alive[r]:
                        if t == eos_id:
                            alive[r] = False
                        else:
                            rows[r].append(t)
                if not any(alive):
                    break
                dec.append(tok)
            out.extend(rows)
    finally:
        model.train(was_training)
    return out


def evaluate(model: nn.Module, task: TextTask, *, batch_size: int = 64) -> dict[str, float]:
    """Greedy decoding over every row of ``task``: mean reward, and accuracy (the share
    of rows whose reward reaches ``task.success_threshold``)."""
    completions = greedy_completions(
        model,
        task.prompt_ids,
        max_new_tokens=task.max_new_tokens,
        eos_id=task.eos_id,
        pad_id=task.pad_id,
        batch_size=batch_size,
    )
    rewards = [
        task.score(row, task.decode(c)) for row, c in zip(task.rows, completions, strict=True)
    ]
    hits = sum(1 for r in rewards if r >= task.success_threshold)
    return {"eval_reward": sum(rewards) / len(rewards), "eval_accuracy": hits / len(rewards)}


def supervised_warmup(
    model: nn.Module,
    task: TextTask,
    target: Callable[[Mapping[str, Any], random.Random], str],
    *,
    steps: int,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
) -> list[float]:
    """A few supervised steps (cross-entropy on ``target(row, rng)`` + EOS after each
    prompt) before RL: the "SFT, then RL" recipe, in miniature. Returns the losses.

    A model trained from scratch never stumbles on a format like ``#### 42`` by chance;
    warming it up on the format with *random* numbers teaches the format and nothing of
    the arithmetic, so what RL then learns is the part the reward checks.
    """
    if steps < 0 or batch_size < 1:
        raise ValueError("steps must be >= 0 and batch_size >= 1")
    dev = model_device(model)
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    was_training = model.training
    model.eval()  # dropout off, as in RL: one mode for every pass
    losses = []
    try:
        for _ in range(steps):
            rows = [rng.randrange(len(task)) for _ in range(batch_size)]
            prompts = [task.prompt_ids[i] for i in rows]
            answers = [_encode(task.tokenizer, target(task.rows[i], rng)) for i in rows]
            width = max(len(a) for a in answers) + 1
            completions = torch.full((batch_size, width), task.pad_id, dtype=torch.long)
            mask = torch.zeros(batch_size, width, dtype=torch.bool)
            for r, ids in enumerate(answers):
                completions[r, : len(ids) + 1] = torch.tensor([*ids, task.eos_id])
                mask[r, : len(ids) + 1] = True
            logp, _ = completion_logprobs(model, prompts, completions.to(dev), task.pad_id)
            loss = -(logp * mask.to(dev)).sum() / mask.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            losses.append(float(loss.detach()))
    finally:
        model.train(was_training)
    return losses
