"""The DiT's global layer: :class:`seqmix.layers.Bidirectional` with text / video gate groups, run over the layout's
interleaved order (Dalal et al. 2025, arXiv 2504.05298, Sec. 3)."""

from __future__ import annotations

import torch

from seqmix import layers as mixers
from seqmix.layers.wrappers import Bidirectional

__all__ = ["GlobalLayer"]


class GlobalLayer(Bidirectional):
    """The paper's bidirectional gated global layer around one registry mixer ``G`` (parameters shared by both
    directions) with four gate vectors {forward, backward} x {text, video} of width D, initialised to ``gate_init``.

    ``txt [B, S L, D], vid [B, F N, D]`` (attention outputs, storage order) -> the same shapes::

        y = interleave(txt | vid)
        y = y + tanh(a_fwd[text|video]) * G(y, positions)
        y = y + tanh(a_bwd[text|video]) * rev(G(rev(y), positions of rev(y)))

    Positions of the reversed pass (``reverse_positions``, see :class:`seqmix.layers.Bidirectional`): by default
    ``"mirrored"``, as the public ttt-video-dit code, which reverses the sequence in storage order and then applies
    its RoPE table by index, so the reversed sequence gets the forward pass's positions index by index; ``"own"``:
    every token keeps its global position.
    The gates act in storage order, where text and video are contiguous (no ``[T, D]`` gate tensor is built); the
    orders and positions are precomputed once per layout (the model's plan). A mixer that declares ``takes_layout``
    also gets the frame / segment boundaries of each pass's read order (:meth:`VideoLayout.token_spans`; the same in
    both passes, see there). Parameters: ``G`` plus ``4 D``.
    """

    def __init__(self, mixer: mixers.Mixer, dim: int, gate_init: float, use_positions: bool,
                 reverse_positions: str = "mirrored"):
        if dim != mixer.dim:
            raise ValueError(f"global layer width {dim} != mixer width {mixer.dim}")
        super().__init__(mixer, alpha_init=gate_init, groups=("text", "video"), inner_name="mixer",
                         reverse_positions=reverse_positions)
        self.use_positions = use_positions

    def forward(self, vid: torch.Tensor, txt: torch.Tensor, plan) -> tuple[torch.Tensor, torch.Tensor]:
        """``vid [B, F N, D], txt [B, S L, D]`` and the model's plan (orders, positions) -> ``(vid, txt)``."""
        if not self.use_positions:
            pos = (None, None)
        elif self.reverse_positions == "mirrored":  # the reversed read order gets the forward table by index
            pos = (plan.pos_fwd, plan.pos_fwd)
        else:
            pos = (plan.pos_fwd, plan.pos_bwd)
        spans = (plan.spans_fwd, plan.spans_bwd) if self.mixer.takes_layout else (None, None)
        txt, vid = self.gated_passes([txt, vid], fwd=(plan.to_fwd, plan.from_fwd), bwd=(plan.to_bwd, plan.from_bwd),
                                     positions=pos, layouts=spans)
        return vid, txt
