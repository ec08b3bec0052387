"""Wrappers usable with any registry mixer: the paper's tanh gate and the bidirectional wrapper.

Dalal et al. 2025 (arXiv 2504.05298), Sec. 3: ``gate(M, X; a) = tanh(a) * M(X) + X`` with a learnable vector
``a`` of model dim initialised to 0.1, so that a pretrained backbone is barely perturbed at initialisation; the
non-causal use runs the same mixer over the sequence and over its reverse, each gated separately:
``Z = gate(M, X; a)``, ``Z' = gate(M', Z; b)`` with ``M'(Z) = rev(M(rev(Z)))`` sharing M's parameters.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .base import Mixer, MixerConfig
from .spans import TokenSpans

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
    layout-aware involution: the default flips every token (the wrapper knows no text); the DiT's global layer
    flips the video and reverses the order of the per-segment text chunks, keeping the tokens inside a chunk in
    order, as the public ttt-video-dit code (why: :mod:`seqmix.backbones.layout`).

    Positions in the reversed pass (``reverse_positions``):

    * ``"mirrored"`` (default): the reversed sequence is read as a sequence in its own right, positions given by
      index over it, so the token at index ``i`` of ``rev(x)`` gets the position the forward pass gives index ``i``
      (the caller's ``positions`` unchanged). This is what the public ttt-video-dit code does (it flips the tokens,
      then applies its RoPE table by index), so checkpoints trained with it reproduce, and both directions see
      positions increase along their read order, as an index-positioned recurrence (Mamba, a short conv) does.
    * ``"own"``: every token keeps its own position (``reverse(positions)``), so a token's rotated Q/K are the same
      in both passes but the reversed scan sees positions decrease.

    Gate groups: with ``groups=("text", "video")`` every direction has one gate vector per group (parameters
    ``gate_fwd_text``, ...), applied to consecutive token groups; :meth:`gated_passes` takes the groups as separate
    tensors and precomputed orders (index tensors) in which the mixer reads them. The DiT's global layer is this
    wrapper with text / video groups and the layout's interleaved orders (:class:`seqmix.backbones.dit.GlobalLayer`).

    Shapes: ``x [B, T, D] -> [B, T, D]``. State: ``2 * inner.state_size()`` (one per direction). Parameters:
    ``inner`` plus ``2 D`` per group (``2 D`` without groups).
    """

    name = "bidirectional"
    Config = MixerConfig
    REVERSE_POSITIONS = ("mirrored", "own")

    def __init__(
        self,
        inner: Mixer,
        *,
        alpha_init: float = 0.1,
        reverse: Callable[[torch.Tensor], torch.Tensor] = _flip_tokens,
        groups: Sequence[str] = (),
        inner_name: str = "inner",
        reverse_positions: str = "mirrored",
    ):
        if not isinstance(inner, Mixer):
            raise TypeError(f"Bidirectional wraps a seqmix Mixer, got {type(inner).__name__}")
        if reverse_positions not in self.REVERSE_POSITIONS:
            raise ValueError(f"reverse_positions must be one of {self.REVERSE_POSITIONS}, got {reverse_positions!r}")
        super().__init__(inner.dim, inner.num_heads, MixerConfig())
        self._inner_name = inner_name  # the submodule's name in state dicts (the DiT keeps "mixer")
        self.add_module(inner_name, inner)
        self.groups = tuple(groups)
        for direction in ("fwd", "bwd"):
            for suffix in self._suffixes():
                setattr(self, f"gate_{direction}{suffix}", TanhGate(inner.dim, alpha_init))
        self.reverse = reverse
        self.reverse_positions = reverse_positions
        self.backends = inner.backends
        self.takes_layout = inner.takes_layout  # a layout is passed on to the wrapped mixer

    @property
    def inner(self) -> Mixer:
        """The wrapped mixer."""
        try:
            return self._modules[self._inner_name]
        except KeyError:  # during __init__, before it is registered
            raise AttributeError("inner") from None

    def head_shard_inner(self) -> Mixer:
        # both passes call the inner mixer's forward: tensor parallel splits it by its own spec
        return self.inner

    def _suffixes(self) -> list[str]:
        return [f"_{g}" for g in self.groups] or [""]

    def _gates(self, direction: str) -> list[TanhGate]:
        return [getattr(self, f"gate_{direction}{suffix}") for suffix in self._suffixes()]

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
        """Positions of the reversed pass's tokens in its read order (see the class docstring)."""
        if self.reverse_positions == "mirrored":  # by index over the reversed sequence: the same table
            return positions
        # "own": every token keeps its position. Unbatched positions are [T] or [T, 3]; batched ones [B, T] or
        # [B, T, 3]; `reverse` acts on the token axis 1.
        unbatched = positions.dim() == 1 or (positions.dim() == 2 and positions.shape[-1] == 3)
        if unbatched:
            return self.reverse(positions.unsqueeze(0)).squeeze(0)
        return self.reverse(positions)

    def gated_passes(
        self,
        parts: list[torch.Tensor],
        *,
        fwd: tuple[torch.Tensor, torch.Tensor] | None = None,
        bwd: tuple[torch.Tensor, torch.Tensor] | None = None,
        positions: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
        layouts: tuple = (None, None),
        **inner_kw,
    ) -> list[torch.Tensor]:
        """Both gated passes over the token groups ``parts`` (``[B, T_i, D]`` each, one per gate group, consecutive
        in storage order); returns the gated groups.

        ``fwd`` / ``bwd``: ``(to [T], back [T])`` index tensors from storage order to the order the mixer reads in
        that pass and back (None: storage order forward, ``reverse`` backward). ``positions``: the positions of the
        tokens in each pass's read order (None: no positions). ``layouts``: each pass's ``layout`` for the mixer
        (e.g. the :class:`~seqmix.layers.spans.TokenSpans` of its read order; None: none passed).
        """
        if len(parts) != len(self._suffixes()):
            raise ValueError(f"{self.name}: {len(parts)} token groups given for gate groups {self.groups or '(one)'}")
        parts = self._gated_pass(self._gates("fwd"), parts, fwd, positions[0], layouts[0], False, inner_kw)
        return self._gated_pass(self._gates("bwd"), parts, bwd, positions[1], layouts[1], True, inner_kw)

    def _gated_pass(self, gates, parts, order, positions, layout, backward: bool, inner_kw) -> list[torch.Tensor]:
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        if layout is not None:
            inner_kw = {**inner_kw, "layout": layout}
        if order is not None:
            to, back = order
            g = self.inner(x.index_select(1, to), positions=positions, **inner_kw).index_select(1, back)
        elif backward:
            g = self.reverse(self.inner(self.reverse(x), positions=positions, **inner_kw))
        else:
            g = self.inner(x, positions=positions, **inner_kw)
        gs = [g] if len(parts) == 1 else g.split([p.shape[1] for p in parts], dim=1)
        return [gate(p, gp) for gate, p, gp in zip(gates, parts, gs)]

    def _forward(self, x, *, layout, positions, state, return_state):
        if return_state:
            raise ValueError("bidirectional: return_state is not defined for a non-causal wrapper")
        rev_pos = None if positions is None else self._reverse_positions(positions)
        (y,) = self.gated_passes([x], positions=(positions, rev_pos), layouts=(layout, self._reverse_layout(layout)))
        return y, None

    def _reverse_layout(self, layout):
        """The layout of the reversed pass: token spans are mirrored for the plain token flip; a custom ``reverse``
        must come with its own spans (:meth:`gated_passes`, ``layouts=``); other layouts pass unchanged."""
        if not isinstance(layout, TokenSpans):
            return layout
        if self.reverse is not _flip_tokens:
            raise ValueError(f"{self.name}: token spans cannot be carried through a custom reverse; give each pass its "
                             "spans with gated_passes(..., layouts=(forward, backward))")
        return layout.mirrored()
