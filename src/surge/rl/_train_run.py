"""``surge rl train``: build what a config describes, train, evaluate, checkpoint, resume.

The run folder (``output``) holds everything a run wrote: a copy of the config, the
tokenizer, ``metrics.jsonl`` (one line per step, plus the evaluations), TensorBoard
events, and ``checkpoint.pt`` (weights, optimizer, policy version, the queue of
untrained rollouts). ``--resume`` continues from the checkpoint at its saved step; the
metrics file grows where it stopped.

Wall time in the metrics leaves evaluation out (``wall_seconds``; the time spent
evaluating is ``eval_seconds``), so sync and async runs compare on training time alone.
"""

from __future__ import annotations

import importlib
import random
import re
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from surge.rl._arith import gsm8k_reward, word_problems
from surge.rl._errors import RLError
from surge.rl._hf import HFCausalLM
from surge.rl._metrics import MetricsLogger, read_metrics
from surge.rl._text import RewardFn, TextTask, evaluate, load_rows, supervised_warmup
from surge.rl._train_config import ConfigError, TrainConfig, where_key
from surge.rl._trainer import StepStats, Trainer

__all__ = ["build_run", "train_from_config"]

CHECKPOINT = "checkpoint.pt"
_FIRST_NUMBER = re.compile(r"-?\d+")


def _reward(spec: str, config: TrainConfig) -> RewardFn:
    if spec == "gsm8k":
        return gsm8k_reward
    module, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(
            f"{where_key(config, ('task', 'reward'))}: cannot import reward {spec!r}. "
            "HINT: 'gsm8k', or 'package.module:function' importable from here."
        ) from None
    if not callable(fn):
        raise ConfigError(f"{where_key(config, ('task', 'reward'))}: {spec!r} is not callable.")
    reward: RewardFn = fn
    return reward


def _rows(config: TrainConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    t = config.task
    if t.kind == "word_problems":
        train = word_problems(t.train_size, seed=t.seed, max_operand=t.max_operand, kinds=t.kinds)
        held_out = word_problems(
            t.eval_size, seed=t.seed + 1, max_operand=t.max_operand, kinds=t.kinds, exclude=train
        )
        return train, held_out
    columns = (t.prompt_column, "answer") if t.reward == "gsm8k" else (t.prompt_column,)
    out: list[list[dict[str, Any]]] = []
    for key in ("train", "eval"):
        source = getattr(t, key)
        if source is None:
            out.append([])
            continue
        try:
            out.append(load_rows(Path(source), columns=columns))
        except RLError as exc:
            raise ConfigError(f"{where_key(config, ('task', key))}: task.{key}: {exc}") from None
    return out[0], out[1]


def _tokenizer(config: TrainConfig, rows: list[dict[str, Any]], run_dir: Path) -> Any:
    saved = run_dir / "tokenizer"
    from transformers import AutoTokenizer

    if saved.exists():  # a resumed run keeps the tokenizer it started with
        return AutoTokenizer.from_pretrained(str(saved))
    section = config.tokenizer
    if section.path is not None:
        tok = AutoTokenizer.from_pretrained(section.path)
    else:
        from surge.rl._text import train_tokenizer

        column = config.task.prompt_column
        texts = [
            f"{row[column]} #### {row['answer']}" if "answer" in row else str(row[column])
            for row in rows
        ]
        tok = train_tokenizer(
            texts, vocab_size=section.vocab_size, chat_template=section.chat_template
        )
    tok.save_pretrained(str(saved))
    return tok


def _model(config: TrainConfig, task: TextTask) -> HFCausalLM:
    from transformers import AutoConfig, AutoModelForCausalLM

    section = config.model
    torch.manual_seed(section.seed)
    model: Any
    if section.path is not None:
        model = AutoModelForCausalLM.from_pretrained(section.path)
    else:
        try:
            hf_config = AutoConfig.for_model(
                section.kind,
                vocab_size=task.vocab_size,
                bos_token_id=task.eos_id,
                eos_token_id=task.eos_id,
                pad_token_id=task.pad_id,
                **section.config,
            )
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{where_key(config, ('model',))}: model: {exc}") from None
        model = AutoModelForCausalLM.from_config(hf_config)  # type: ignore[no-untyped-call]
    width = model.get_output_embeddings().weight.shape[0]
    if width < len(task.tokenizer):
        raise ConfigError(
            f"{where_key(config, ('model',))}: the model predicts {width} tokens but the "
            f"tokenizer has {len(task.tokenizer)}. HINT: use the model's own tokenizer."
        )
    task.vocab_size = width  # the sampler draws over every logit the model has
    if section.lora is not None:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise ConfigError(
                f"{where_key(config, ('model', 'lora'))}: model.lora needs the peft "
                "package. HINT: pip install peft"
            ) from None
        try:
            model = get_peft_model(model, LoraConfig(**section.lora))
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"{where_key(config, ('model', 'lora'))}: model.lora: {exc}"
            ) from None
    return HFCausalLM(model)


def build_run(config: TrainConfig, run_dir: Path) -> tuple[Trainer, TextTask, TextTask | None]:
    """The trainer, train task and held-out task a config describes."""
    train_rows, eval_rows = _rows(config)
    tok = _tokenizer(config, train_rows, run_dir)
    t = config.task
    reward = _reward(t.reward, config) if t.kind == "dataset" else gsm8k_reward
    task = TextTask(
        train_rows,
        tok,
        reward,
        max_new_tokens=t.max_new_tokens,
        prompt_column=t.prompt_column,
        chat_template=t.chat_template,
    )
    held_out = task.split(eval_rows) if eval_rows else None
    model = _model(config, task)
    if held_out is not None:
        held_out.vocab_size = task.vocab_size
    trainer = Trainer(model, task, config.rl, device=config.device)
    return trainer, task, held_out


def _warmup(config: TrainConfig, trainer: Trainer, task: TextTask) -> list[float]:
    """Supervised warm-up on the ``#### n`` format, never on a row's own answer.

    ``random_answer``: the answer of a random row, so the model learns the format and
    nothing else. ``first_number``: the first number of the question (the first operand
    of a word problem), so it also learns to read a number from the prompt; RL then has
    to learn the arithmetic. A model trained from scratch needs that much to start: with
    random answers it collapses to the most common one before it learns to read.
    """
    w = config.warmup
    answers = [str(row["answer"]) for row in task.rows if "answer" in row]
    if not w.steps or not answers:
        return []
    column = config.task.prompt_column

    def target(row: Any, rng: random.Random) -> str:
        if w.target == "first_number":
            found = _FIRST_NUMBER.search(str(row[column]))
            if found is not None:
                return f" #### {found.group(0)}"
        return f" #### {rng.choice(answers)}"

    return supervised_warmup(
        trainer.model,
        task,
        target,
        steps=w.steps,
        batch_size=w.batch_size,
        lr=w.lr,
        seed=config.rl.seed,
    )


def _step_record(stats: StepStats, wall: float, tokens_per_second: float) -> dict[str, Any]:
    record = asdict(stats)
    for name in ("step", "tickets", "version"):
        record.pop(name)
    record["wall_seconds"] = wall
    record["tokens_per_second"] = tokens_per_second
    return record


def train_from_config(
    config: TrainConfig,
    *,
    resume: bool = False,
    wandb: bool = False,
    steps: int | None = None,
    progress: Any = None,
) -> Path:
    """Run the training a config describes; return the run folder.

    ``progress(done, total, record)`` is called after each step (the CLI draws its
    progress line from it).
    """
    run_dir = Path(config.output)  # relative paths are to the current directory
    checkpoint = run_dir / CHECKPOINT
    if resume and not checkpoint.exists():
        raise RLError(f"{checkpoint}: nothing to resume. HINT: drop --resume to start a run.")
    if not resume and (run_dir / "metrics.jsonl").exists():
        raise RLError(
            f"{run_dir} already holds a run. HINT: --resume to continue it, or set another "
            "output folder."
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    if config.source and not resume:
        shutil.copyfile(config.source, run_dir / f"config{Path(config.source).suffix}")
    trainer, task, held_out = build_run(config, run_dir)
    total = config.steps if steps is None else steps
    wall_offset, eval_total = 0.0, 0.0
    if resume:
        trainer.load_checkpoint(checkpoint)
        history = [r for r in read_metrics(run_dir) if r["step"] <= trainer.step]
        if history:
            wall_offset = float(history[-1].get("wall_seconds", 0.0))
            eval_total = float(history[-1].get("eval_seconds", 0.0))
    logger = MetricsLogger(
        run_dir, wandb=wandb, run_name=run_dir.name, config={"rl": asdict(config.rl)}
    )
    try:
        if not resume:
            losses = _warmup(config, trainer, task)
            trainer.reset_reference()  # the KL anchors to the warmed-up policy
            record: dict[str, Any] = {"wall_seconds": 0.0, "eval_seconds": 0.0}
            if losses:
                record["warmup_loss"] = losses[-1]
            if held_out is not None and config.eval_every:
                t0 = time.perf_counter()
                record |= evaluate(trainer.model, held_out)
                eval_total += time.perf_counter() - t0
                record["eval_seconds"] = eval_total
            logger.log(0, record)
        run_eval = 0.0  # evaluation inside this call's training loop
        last_wall = 0.0
        for stats in trainer.run(max(0, total - trainer.step)):
            done = stats.version
            wall = stats.wall_seconds - run_eval
            tps = stats.tokens / max(wall - last_wall, 1e-9)
            last_wall = wall
            record = _step_record(stats, wall_offset + wall, tps)
            if (
                held_out is not None
                and config.eval_every
                and (done % config.eval_every == 0 or done == total)
            ):
                t0 = time.perf_counter()
                record |= evaluate(trainer.model, held_out)
                spent = time.perf_counter() - t0
                run_eval += spent
                eval_total += spent
            record["eval_seconds"] = eval_total
            if (config.save_every and done % config.save_every == 0) or done == total:
                trainer.save_checkpoint(checkpoint)
            logger.log(done, record)
            if progress is not None:
                progress(done, total, record)
    finally:
        logger.close()
    return run_dir
