"""A tiny decoder-only transformer built from a config: no downloads, seconds to train on CPU.

It exists so the whole async-RL loop can be run, tested and studied on a laptop. Any
``torch.nn.Module`` mapping ``[batch, time]`` token ids to ``[batch, time, vocab]`` logits
can take its place in the trainer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TinyLM", "TinyLMConfig", "token_logprobs"]

KV = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class TinyLMConfig:
    """Shape of a :class:`TinyLM`.

    The defaults learn the demo task (reversing a digit string) within minutes on 2 cores.
    """

    vocab_size: int
    max_len: int = 32
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 256

    def __post_init__(self) -> None:
        if self.vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {self.vocab_size}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}). "
                "HINT: pick n_heads among the divisors of d_model."
            )
        for name in ("max_len", "d_model", "n_layers", "n_heads", "d_ff"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


class _Block(nn.Module):
    def __init__(self, cfg: TinyLMConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.ff1 = nn.Linear(cfg.d_model, cfg.d_ff)
        self.ff2 = nn.Linear(cfg.d_ff, cfg.d_model)

    def forward(self, x: torch.Tensor, past: KV | None = None) -> tuple[torch.Tensor, KV]:
        """``x`` holds new positions only; ``past`` the keys/values of earlier ones."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        shape = (b, t, self.n_heads, d // self.n_heads)
        q, k, v = (z.view(shape).transpose(1, 2) for z in (q, k, v))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        # Without a cache the queries are every position: causal mask. With one, the new
        # query (one token) may see every cached position.
        att = F.scaled_dot_product_attention(q, k, v, is_causal=past is None and t > 1)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        out: torch.Tensor = x + self.ff2(F.gelu(self.ff1(self.ln2(x))))
        return out, (k, v)


class TinyLM(nn.Module):
    """Decoder-only transformer with learned positions and pre-norm blocks.

    Example::

        model = TinyLM(TinyLMConfig(vocab_size=14))
        logits = model(torch.zeros(2, 5, dtype=torch.long))  # [2, 5, 14]
    """

    def __init__(self, config: TinyLMConfig) -> None:
        super().__init__()
        self.config = config
        self.tok = nn.Embedding(config.vocab_size, config.d_model)
        self.pos = nn.Embedding(config.max_len, config.d_model)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        if t > self.config.max_len:
            raise ValueError(
                f"sequence of {t} tokens exceeds max_len={self.config.max_len}. "
                "HINT: raise TinyLMConfig.max_len."
            )
        logits, _ = self._run(tokens, None)
        return logits

    def _run(self, tokens: torch.Tensor, cache: list[KV] | None) -> tuple[torch.Tensor, list[KV]]:
        start = 0 if cache is None else cache[0][0].shape[2]
        pos = torch.arange(start, start + tokens.shape[1], device=tokens.device)
        x = self.tok(tokens) + self.pos(pos)
        new_cache: list[KV] = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, None if cache is None else cache[i])
            new_cache.append(kv)
        out: torch.Tensor = self.head(self.ln_f(x))
        return out, new_cache

    def prefill(self, tokens: torch.Tensor) -> tuple[torch.Tensor, list[KV]]:
        """Logits of the last position and the key/value cache, for incremental decoding.

        Generation then costs one position per token instead of the whole prefix: the
        generator uses ``prefill``/``decode`` when a model has them, ``forward`` otherwise.
        """
        if tokens.shape[1] > self.config.max_len:
            raise ValueError(f"prompt of {tokens.shape[1]} tokens exceeds max_len")
        logits, cache = self._run(tokens, None)
        return logits[:, -1], cache

    def decode(self, token: torch.Tensor, cache: list[KV]) -> tuple[torch.Tensor, list[KV]]:
        """Logits after appending ``token`` (``[B]``) to the cached sequence."""
        if cache[0][0].shape[2] >= self.config.max_len:
            raise ValueError(f"sequence exceeds max_len={self.config.max_len}")
        logits, cache = self._run(token[:, None], cache)
        return logits[:, -1], cache

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        return f"params={n:,} ({math.log10(max(n, 1)):.1f} log10)"


def token_logprobs(model: nn.Module, tokens: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Log-probabilities of ``tokens[:, prompt_len:]`` under ``model``, shape ``[B, T_completion]``.

    One forward pass over prompt + completion, as the trainer needs for the policy, the
    proximal policy and the reference policy alike.
    """
    logits = model(tokens[:, :-1])[:, prompt_len - 1 :]
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, tokens[:, prompt_len:].unsqueeze(-1)).squeeze(-1)
