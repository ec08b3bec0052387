"""A small causal language-model backbone around any registry mixer (Zoology-style, arXiv 2312.04927).

token embedding (+ learned absolute positions) -> N pre-norm blocks of ``x + mixer(conv(LN(x)))``,
``x + MLP(LN(x))`` -> final LayerNorm -> output head tied to the embedding. A hybrid stack picks a mixer per layer
index. ``conv`` is an optional short causal depthwise convolution with a residual (``short_conv`` taps, off by
default): it hands every position its few predecessors, which associative recall needs (the value must be stored
next to its key) and which attention otherwise has to learn with a second layer (Zoology's short convolutions,
"Canon layers" of Allen-Zhu 2025). Mamba2 and Gated DeltaNet carry such a convolution inside; giving it to every
layer keeps a comparison fair.

Parameters: ``V D + P D`` embeddings, per block ``mixer + 2 (D^2 r) + 2 (D r) + D + 4 D`` (MLP ratio r), ``2 D``
final norm; the head is tied. Shapes: tokens ``[B, T]`` (int64) -> logits ``[B, T, V]``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from seqmix import layers as L

logger = logging.getLogger(__name__)

__all__ = ["LMConfig", "MixerLM"]


@dataclass(kw_only=True)
class LMConfig:
    """Causal LM backbone settings.

    Attributes:
        vocab_size: number of token ids V.
        dim: model width D.
        num_layers: number of blocks N.
        num_heads: heads passed to every mixer.
        mixer: a registry name for every block, or a list with one name per block (hybrid stacks).
        mixer_config: config fields for the mixers (``causal=True`` is added: every block mixer must have a causal
            form);
            a dict for all blocks or a list with one dict per block.
        mlp_ratio: hidden width of the MLP as a multiple of D (0 = no MLP).
        max_len: number of learned absolute positions (0 = none; then only the mixers see order).
        rope: pass token positions to the mixers that take RoPE positions (mixers whose class declares
            ``takes_positions``: attention, TTT, LaCT, which uses them with its ``rope``); position-free recurrences
            see order through their scan.
        short_conv: taps K of the causal depthwise convolution before every mixer (``y = x + conv_K(x)``, weights
            initialised to zero so it starts as the identity); 0 = none.
        norm_eps: LayerNorm eps.
        dropout: dropout on embeddings and residual branches.
    """

    vocab_size: int
    dim: int = 64
    num_layers: int = 2
    num_heads: int = 2
    mixer: str | list[str] = "full_attn"
    mixer_config: dict | list[dict] = field(default_factory=dict)
    mlp_ratio: float = 4.0
    max_len: int = 2048
    rope: bool = True
    short_conv: int = 0
    norm_eps: float = 1e-5
    dropout: float = 0.0


def _causal_cfg(name: str, cfg: dict) -> dict:
    if not L.mixer_class(name).can_be_causal():
        raise ValueError(f"LM block mixer {name!r} is not causal; a causal LM needs causal mixers")
    if cfg.get("causal") is False:
        raise ValueError(f"LM block mixer {name!r}: causal=False would let tokens see the future")
    return {**cfg, "causal": True}


class ShortConv(nn.Module):
    """Causal depthwise convolution with a residual: ``y_t = x_t + sum_{i<K} w_i * x_{t-K+1+i}`` (zero-initialised).

    ``forward(x [B, T, D], state [B, K-1, D] | None) -> (y [B, T, D], state)``: the state is the last K-1 inputs,
    so chunked inference equals one pass. Shifted multiply-adds instead of ``conv1d``: exact, and much faster on
    CPU for these tiny kernels.
    """

    def __init__(self, dim: int, taps: int):
        super().__init__()
        if taps < 2:
            raise ValueError(f"short_conv must be 0 (off) or >= 2 taps, got {taps}")
        self.taps = taps
        self.weight = nn.Parameter(torch.zeros(taps, dim))  # [K, D]; w[K-1] multiplies the current token

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, D = x.shape
        K = self.taps
        past = x.new_zeros(B, K - 1, D) if state is None else state.to(x.dtype)
        xp = torch.cat([past, x], dim=1)  # [B, K-1+T, D]
        y = x + sum(xp[:, i:i + T] * self.weight[i] for i in range(K))
        return y, xp[:, -(K - 1):]


class _Block(nn.Module):
    def __init__(self, c: LMConfig, name: str, mcfg: dict):
        super().__init__()
        self.norm1 = nn.LayerNorm(c.dim, eps=c.norm_eps)
        if c.short_conv < 0 or c.short_conv == 1:
            raise ValueError(f"short_conv must be 0 (off) or >= 2 taps, got {c.short_conv}")
        self.conv = ShortConv(c.dim, c.short_conv) if c.short_conv else None
        self.mixer = L.build(name, dim=c.dim, num_heads=c.num_heads, **_causal_cfg(name, mcfg))
        if not self.mixer.causal:
            raise ValueError(f"LM block mixer {name!r} is not causal; a causal LM needs causal mixers")
        self.norm2 = nn.LayerNorm(c.dim, eps=c.norm_eps) if c.mlp_ratio > 0 else None
        h = int(round(c.dim * c.mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(c.dim, h), nn.GELU(approximate="tanh"), nn.Linear(h, c.dim)) if h else None
        self.drop = nn.Dropout(c.dropout)
        self.rope = c.rope and self.mixer.takes_positions

    def forward(self, x: torch.Tensor, state=None, return_state: bool = False, positions=None):
        kw = {"positions": positions} if self.rope and positions is not None else {}
        h = self.norm1(x)
        conv_state = None
        if self.conv is not None:  # the block state is (conv state, mixer state)
            conv_state, state = (None, None) if state is None else state
            h, conv_state = self.conv(h, conv_state)
        if return_state:
            m, state = self.mixer(h, state=state, return_state=True, **kw)
            if self.conv is not None:
                state = (conv_state, state)
        else:  # a carried state is still used when the caller does not want the new one back
            m = self.mixer(h, state=state, **kw)
        x = x + self.drop(m)
        if self.mlp is not None:
            x = x + self.drop(self.mlp(self.norm2(x)))
        return (x, state) if return_state else x


class MixerLM(nn.Module):
    """Causal LM over any registry mixer(s). ``forward(tokens [B, T]) -> logits [B, T, V]``."""

    def __init__(self, config: LMConfig):
        super().__init__()
        c = self.config = config
        if c.vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {c.vocab_size}")
        if c.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {c.num_layers}")
        names = [c.mixer] * c.num_layers if isinstance(c.mixer, str) else list(c.mixer)
        if len(names) != c.num_layers:
            raise ValueError(f"mixer lists {len(names)} names for num_layers={c.num_layers}; give one per layer")
        cfgs = [c.mixer_config] * c.num_layers if isinstance(c.mixer_config, dict) else list(c.mixer_config)
        if len(cfgs) != c.num_layers:
            raise ValueError(f"mixer_config lists {len(cfgs)} dicts for num_layers={c.num_layers}")
        self.mixer_names = names
        self.embed = nn.Embedding(c.vocab_size, c.dim)
        self.pos = nn.Embedding(c.max_len, c.dim) if c.max_len > 0 else None
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(_Block(c, n, m) for n, m in zip(names, cfgs))
        self.norm = nn.LayerNorm(c.dim, eps=c.norm_eps)
        nn.init.normal_(self.embed.weight, std=0.02)
        if self.pos is not None:
            nn.init.normal_(self.pos.weight, std=0.02)

    def state_size(self, seq_len: int | None = None) -> int:
        """Recurrent state / KV cache elements per sequence over all blocks."""
        return sum(b.mixer.state_size(seq_len) for b in self.blocks)

    def forward(self, tokens: torch.Tensor, *, state: list | None = None, return_state: bool = False,
                offset: int = 0):
        """tokens ``[B, T]`` -> logits ``[B, T, V]``; with ``return_state`` also the per-block mixer states.

        ``offset``: absolute position of ``tokens[:, 0]`` (for chunked inference with carried state).
        """
        x, new_states = self._trunk(tokens, state, return_state, offset)
        logits = self.head(x)
        return (logits, new_states) if return_state else logits

    def scored_logits(self, tokens: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
        """Logits at the ``scored`` positions only: tokens ``[B, T]``, scored ``[B, T]`` bool -> ``[N, V]`` (N = the
        scored count, in row-major order), equal to ``forward(tokens)[scored]``. Training on tasks that score a few
        positions (MQAR: the queries) uses it because the tied head costs ``T V D`` per sequence, which at Zoology's
        vocabulary of 8192 outweighs the blocks many times over."""
        if scored.shape != tokens.shape or scored.dtype != torch.bool:
            raise ValueError(f"scored must be a bool mask shaped like tokens {tuple(tokens.shape)}, "
                             f"got {tuple(scored.shape)} {scored.dtype}")
        return self.head(self._trunk(tokens, None, False, 0)[0][scored])

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm and the tied output head: ``[..., D]`` -> ``[..., V]``."""
        return self.norm(x) @ self.embed.weight.T

    def _trunk(self, tokens: torch.Tensor, state: list | None, return_state: bool, offset: int):
        """Embedding and blocks: tokens ``[B, T]`` -> (features ``[B, T, D]``, per-block states or [])."""
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"tokens must be an integer tensor [B, T], got {tuple(tokens.shape)} {tokens.dtype}")
        B, T = tokens.shape
        if T == 0:
            raise ValueError("empty sequence (T=0)")
        if int(tokens.max()) >= self.config.vocab_size or int(tokens.min()) < 0:
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}), got [{int(tokens.min())}, {int(tokens.max())}]")
        x = self.embed(tokens)
        positions = torch.arange(offset, offset + T, device=tokens.device)
        if self.pos is not None:
            if offset + T > self.config.max_len:
                raise ValueError(f"positions up to {offset + T} exceed max_len={self.config.max_len}")
            x = x + self.pos(positions)
        x = self.drop(x)
        states = [None] * len(self.blocks) if state is None else list(state)
        new_states = []
        for blk, st in zip(self.blocks, states):
            if return_state:
                x, st = blk(x, state=st, return_state=True, positions=positions)
                new_states.append(st)
            else:
                x = blk(x, state=st, positions=positions)
        return x, new_states
