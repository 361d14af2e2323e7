"""A Hugging Face ``transformers`` causal LM as a policy the trainer and engines can drive.

The trainer needs ``model(tokens) -> logits`` (with ``attention_mask`` and
``position_ids`` when prompts are left-padded); the generator also uses ``prefill`` and
``decode`` when a model has them, so each new token costs one position, not the whole
prefix. The key/value cache is a transformers ``DynamicCache`` passed the way the
installed version asks (``cache=`` in transformers 5, ``past_key_values=`` before), and
the attention mask and next positions of a padded batch travel beside it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["HFCausalLM"]


@dataclass
class _DecodeState:
    """What decoding one more token needs: the cache, and for a padded batch the mask so
    far and each row's next position."""

    cache: Any
    attention_mask: torch.Tensor | None
    next_position: torch.Tensor | None


def _new_cache(model: nn.Module) -> Any:
    try:
        from transformers import DynamicCache
    except ImportError:  # not transformers: the model keeps its own cache
        return None
    config = getattr(model, "config", None)
    try:
        return DynamicCache(config=config) if config is not None else DynamicCache()
    except TypeError:  # transformers < 4.56 takes no config
        return DynamicCache()


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
       like any other. A ``peft`` model works too (LoRA: only the adapters train)::

           from peft import LoraConfig, get_peft_model

           policy = HFCausalLM(get_peft_model(model, LoraConfig(r=8, target_modules=["c_attn"])))
    The trainer computes log-probabilities in eval mode (dropout off),
       the mode the generator samples in; with ``gradient_checkpointing`` in train mode
       with every dropout probability set to 0 (transformers checkpoints only in train
       mode).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        # A peft model (LoRA) forwards **kwargs: ask the model it wraps.
        get_base: Any = getattr(model, "get_base_model", None)
        inner = get_base() if callable(get_base) else model
        try:
            params = inspect.signature(inner.forward).parameters
        except (TypeError, ValueError):
            params = {}  # type: ignore[assignment]
        # transformers 5 renamed the cache argument and output field to `cache`.
        self._cache_name = "cache" if "cache" in params else "past_key_values"

    def gradient_checkpointing_enable(self) -> None:
        """Recompute each layer's activations in the backward pass (transformers'
        checkpointing, non-reentrant: it needs no input that requires grad, so LoRA's
        frozen embeddings work too)."""
        kwargs = {"use_reentrant": False}
        # transformers 5.x renamed it activation_checkpointing_enable (the old name warns).
        enable: Any = getattr(self.model, "activation_checkpointing_enable", None)
        if callable(enable):
            enable(activation_checkpointing_kwargs=kwargs)
            return
        enable = getattr(self.model, "gradient_checkpointing_enable", None)
        if not callable(enable):
            raise TypeError(
                f"{type(self.model).__name__} has no gradient_checkpointing_enable(). "
                "HINT: use a transformers PreTrainedModel, or gradient_checkpointing=false."
            )
        enable(gradient_checkpointing_kwargs=kwargs)

    def forward(
        self,
        tokens: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        out = self.model(
            input_ids=tokens,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        )
        logits: torch.Tensor = out.logits
        return logits

    def _step(
        self, tokens: torch.Tensor, state: _DecodeState, positions: torch.Tensor | None
    ) -> tuple[torch.Tensor, _DecodeState]:
        kwargs: dict[str, Any] = {"input_ids": tokens, "use_cache": True}
        if state.cache is not None:
            kwargs[self._cache_name] = state.cache
        if state.attention_mask is not None:
            kwargs["attention_mask"] = state.attention_mask
            kwargs["position_ids"] = positions
        out = self.model(**kwargs)
        cache = out.get(self._cache_name) if hasattr(out, "get") else None
        state.cache = cache if cache is not None else getattr(out, self._cache_name, None)
        return out.logits[:, -1], state

    def prefill(
        self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, _DecodeState]:
        """Logits of the last position and the state to decode from.

        ``attention_mask`` marks real tokens of left-padded prompts (1) and padding (0);
        positions then count real tokens only, as in an unpadded sequence.
        """
        state = _DecodeState(_new_cache(self.model), None, None)
        positions = None
        if attention_mask is not None:
            mask = attention_mask.long()
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            state.attention_mask = mask
            state.next_position = positions[:, -1] + 1
        return self._step(tokens, state, positions)

    def decode(self, token: torch.Tensor, state: _DecodeState) -> tuple[torch.Tensor, _DecodeState]:
        """Logits after appending ``token`` (``[B]``) to the cached sequence."""
        positions = None
        if state.attention_mask is not None and state.next_position is not None:
            ones = torch.ones_like(state.attention_mask[:, :1])
            state.attention_mask = torch.cat([state.attention_mask, ones], dim=1)
            positions = state.next_position[:, None]
            state.next_position = state.next_position + 1
        return self._step(token[:, None], state, positions)
