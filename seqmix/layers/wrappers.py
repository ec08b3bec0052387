"""Wrappers usable with any registry mixer: the paper's tanh gate and the bidirectional wrapper.

Dalal et al. 2025 (arXiv 2504.05298), Sec. 3: ``gate(M, X; a) = tanh(a) * M(X) + X`` with a learnable vector
``a`` of model dim initialised to 0.1, so that a pretrained backbone is barely perturbed at initialisation; the
non-causal use runs the same mixer over the sequence and over its reverse, each gated separately:
``Z = gate(M, X; a)``, ``Z' = gate(M', Z; b)`` with ``M'(Z) = rev(M(rev(Z)))`` sharing M's parameters.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .base import Mixer, MixerConfig

__all__ = ["TanhGate", "Bidirectional"]


class TanhGate(nn.Module):
    """``x + tanh(alpha) * update`` with ``alpha: [dim]`` initialised to ``alpha_init`` (paper: 0.1)."""

    def __init__(self, dim: int, alpha_init: float = 0.1):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((dim,), float(alpha_init)))

    def forward(self, x: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.alpha).to(update.dtype) * update


def _flip_tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flip(1)


class Bidirectional(Mixer):
    """Non-causal use of any mixer: a gated forward pass, then a gated pass over the reversed sequence.

    ``y = Z + tanh(b) * rev(M(rev(Z)))`` with ``Z = x + tanh(a) * M(x)``; both directions share ``M``.
    Note the output includes the residual ``x`` (as the paper's gate does). ``reverse`` may be replaced by a
    layout-aware involution (the DiT reverses the order of text chunks but not the tokens inside them).

    Shapes: ``x [B, T, D] -> [B, T, D]``. State: ``2 * inner.state_size()`` (one per direction).
    """

    name = "bidirectional"
    Config = MixerConfig

    def __init__(
        self,
        inner: Mixer,
        *,
        alpha_init: float = 0.1,
        reverse: Callable[[torch.Tensor], torch.Tensor] = _flip_tokens,
    ):
        if not isinstance(inner, Mixer):
            raise TypeError(f"Bidirectional wraps a seqmix Mixer, got {type(inner).__name__}")
        super().__init__(inner.dim, inner.num_heads, MixerConfig())
        self.inner = inner
        self.gate_fwd = TanhGate(inner.dim, alpha_init)
        self.gate_bwd = TanhGate(inner.dim, alpha_init)
        self.reverse = reverse
        self.backends = inner.backends

    @property
    def causal(self) -> bool:
        return False

    def state_size(self, seq_len: int | None = None) -> int:
        return 2 * self.inner.state_size(seq_len)

    def select_backend(self, device, dtype=None, shapes=None):
        """The wrapped mixer's backend (the wrapper adds gates, no backend of its own)."""
        return self.inner.select_backend(device, dtype, shapes)

    def backend_supports(self, backend, device, dtype=None, shapes=None):
        return self.inner.backend_supports(backend, device, dtype, shapes)

    def _reverse_positions(self, positions: torch.Tensor) -> torch.Tensor:
        # Every token keeps its own position when the sequence is reversed. Unbatched positions are [T] or
        # [T, 3]; batched ones [B, T] or [B, T, 3]; `reverse` acts on the token axis 1.
        unbatched = positions.dim() == 1 or (positions.dim() == 2 and positions.shape[-1] == 3)
        if unbatched:
            return self.reverse(positions.unsqueeze(0)).squeeze(0)
        return self.reverse(positions)

    def _forward(self, x, *, layout, positions, state, return_state):
        if return_state:
            raise ValueError("bidirectional: return_state is not defined for a non-causal wrapper")
        kw = {} if layout is None else {"layout": layout}
        rev_pos = None if positions is None else self._reverse_positions(positions)
        z = self.gate_fwd(x, self.inner(x, positions=positions, **kw))
        back = self.reverse(self.inner(self.reverse(z), positions=rev_pos, **kw))
        return self.gate_bwd(z, back), None
