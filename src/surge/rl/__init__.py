"""surge.rl: asynchronous RL training of language models, with bounded staleness.

Generation and training overlap on separate resources while every sample stays within
``max_staleness`` policy versions of the weights that train on it. Runs end to end on a
CPU with a tiny transformer; the same trainer drives a generator in a thread or in its
own process.

Example::

    import torch
    from surge.rl import RLConfig, ReverseDigits, TinyLM, TinyLMConfig, Trainer

    task = ReverseDigits(length=5)
    torch.manual_seed(0)
    model = TinyLM(TinyLMConfig(vocab_size=task.vocab_size))
    trainer = Trainer(model, task, RLConfig(mode="async", max_staleness=2))
    for stats in trainer.run(steps=50):
        print(stats.step, round(stats.reward_mean, 2), stats.lag_max)

Pieces, each replaceable:

- :class:`Trainer` + :class:`RLConfig`: the loop, the sync/async switch, the staleness
  bound (admission control), GRPO or online DPO, checkpoint and resume.
- Engines, where generation runs: :class:`ThreadEngine` (in-process weight sync),
  :class:`ProcessEngine` (own process, ``torch.distributed`` weight sync: NCCL between
  two GPUs, gloo otherwise),
  :class:`OpenAIEngine` (a vLLM-style server, requests through :func:`surge.gather`),
  :class:`RayEngine` (a pool of Ray actors with their own CPU/GPU resource requests),
  :class:`VLLMServerEngine` (vLLM behind TRL's ``trl vllm-serve``, weights over NCCL),
  :class:`SGLangEngine` (SGLang, weights from disk or over NCCL).
- :class:`Task` (prompt sampler + reward), :class:`ReverseDigits` (the demo task),
  :class:`TextTask` (rows of text or chat prompts, any Hugging Face tokenizer, a reward
  on the decoded completion), :func:`word_problems` + :func:`gsm8k_reward` (arithmetic
  word problems in GSM8k's ``#### 42`` format),
  :class:`TinyLM` (a transformer built from a config, with KV-cached decoding),
  :class:`HFCausalLM` (any ``transformers`` causal LM as the policy).

From a config file: ``surge rl train CONFIG.yaml`` (task, tokenizer, model, every
``RLConfig`` field; held-out evaluation, checkpoints, ``--resume``, metrics to JSONL and
TensorBoard) and ``surge rl report RUN...`` (reward and accuracy against wall time).

Requires the ``rl`` extra (``pip install 'surge[rl]'``) for torch.
"""

from surge.rl._arith import extract_answer, gsm8k_reward, word_problems
from surge.rl._config import RLConfig
from surge.rl._engines import DistributedWeightSync, Engine, ProcessEngine, ThreadEngine
from surge.rl._errors import RLError, TrainerStopped, WeightSyncTimeout
from surge.rl._hf import HFCausalLM
from surge.rl._losses import dpo_loss, group_advantages, grpo_loss, kl_k3, offpolicy_metrics
from surge.rl._model import TinyLM, TinyLMConfig, token_logprobs
from surge.rl._openai import OpenAIEngine, WeightPusher, disk_weight_pusher
from surge.rl._ray import RayEngine
from surge.rl._rollout import Generator, Rollout
from surge.rl._servers import SGLangEngine, VLLMServerEngine
from surge.rl._task import ReverseDigits, Task
from surge.rl._text import (
    TextTask,
    completion_logprobs,
    evaluate,
    load_rows,
    supervised_warmup,
    train_tokenizer,
)
from surge.rl._trainer import StepStats, Trainer
from surge.rl._weights import InProcessWeightSync, WeightLayout, WeightSync, WeightSyncStats

__all__ = [
    "DistributedWeightSync",
    "Engine",
    "Generator",
    "HFCausalLM",
    "InProcessWeightSync",
    "OpenAIEngine",
    "ProcessEngine",
    "RLConfig",
    "RLError",
    "RayEngine",
    "ReverseDigits",
    "Rollout",
    "SGLangEngine",
    "StepStats",
    "Task",
    "TextTask",
    "ThreadEngine",
    "TinyLM",
    "TinyLMConfig",
    "Trainer",
    "TrainerStopped",
    "VLLMServerEngine",
    "WeightLayout",
    "WeightPusher",
    "WeightSync",
    "WeightSyncStats",
    "WeightSyncTimeout",
    "completion_logprobs",
    "disk_weight_pusher",
    "dpo_loss",
    "evaluate",
    "extract_answer",
    "group_advantages",
    "grpo_loss",
    "gsm8k_reward",
    "kl_k3",
    "load_rows",
    "offpolicy_metrics",
    "supervised_warmup",
    "token_logprobs",
    "train_tokenizer",
    "word_problems",
]
