"""A Hugging Face ``transformers`` causal LM as a policy the trainer and engines can drive.

The trainer needs ``model(tokens) -> logits``; the generator also uses ``prefill`` and
``decode`` when a model has them, so each new token costs one position, not the whole
prefix. A transformers model returns an output object and keeps its key/value cache in
``past_key_values``; this adapter maps one onto the other and nothing more. It imports
nothing from transformers itself, so any module with the same call signature works.

Prompts of a :class:`~surge.rl.Task` all have the same length, so batches need neither
padding nor an attention mask, and positions follow from the cache length.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["HFCausalLM"]


class HFCausalLM(nn.Module):
    """Wrap a ``transformers`` causal LM (``AutoModelForCausalLM`` and kin) as a policy.

    Example (a model built from a config, nothing downloaded)::

        from transformers import GPT2Config, GPT2LMHeadModel

        task = ReverseDigits(length=5)
        config = GPT2Config(vocab_size=task.vocab_size, n_positions=32, n_embd=64,
                            n_layer=2, n_head=4, bos_token_id=task.BOS,
                            eos_token_id=task.EOS)
        policy = HFCausalLM(GPT2LMHeadModel(config))
        trainer = Trainer(policy, task, RLConfig(mode="async", engine="process"))

    The state dict is the wrapped model's under a ``model.`` prefix; weight sync moves it
    like any other.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model(input_ids=tokens, use_cache=False).logits
        return logits

    def prefill(self, tokens: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Logits of the last position and the model's key/value cache."""
        out = self.model(input_ids=tokens, use_cache=True)
        return out.logits[:, -1], out.past_key_values

    def decode(self, token: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        """Logits after appending ``token`` (``[B]``) to the cached sequence."""
        out = self.model(input_ids=token[:, None], past_key_values=cache, use_cache=True)
        return out.logits[:, -1], out.past_key_values
