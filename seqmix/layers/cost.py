"""Analytic cost model shared by every mixer: the :class:`Cost` record and the formulas more than one family uses.

Each mixer class states its own core formula (``Mixer.core_cost``); :meth:`seqmix.layers.Mixer.cost` adds what
every layer has (projections, the layer's input and output, parameters read once). These are ESTIMATES that show
how cost grows with T and put measured times next to a machine's ceilings, not operation counts of one
implementation. FLOPs count matrix-product work only (2 per multiply-add); bytes are the traffic an ideal
implementation cannot avoid. See :mod:`seqmix.bench.costs` for the modes a benchmark times.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

__all__ = ["Cost", "FP32_BYTES", "attention_pairs", "projections_cost", "ttt_minibatch_flops"]

FP32_BYTES = 4


@dataclass(frozen=True)
class Cost:
    """FLOPs (matmul work, 2 per multiply-add) and bytes moved; ``model`` names the formula used."""

    flops: float
    bytes: float
    model: str = ""

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.flops + other.flops, self.bytes + other.bytes, self.model or other.model)

    def scale(self, k: float) -> "Cost":
        return Cost(self.flops * k, self.bytes * k, self.model)


# ------------------------------------------------------------------------------------------------ projections
def projections_cost(module: nn.Module, n: int, batch: int, elem: int) -> Cost:
    """Every nn.Linear / nn.Conv1d in ``module``: ``2 in out`` FLOPs per token; weights read once, inputs and
    outputs per token (``elem`` bytes per element)."""
    flops = 0.0
    nbytes = 0.0
    for m in module.modules():
        if isinstance(m, nn.Linear):
            flops += 2.0 * m.in_features * m.out_features * n * batch
            nbytes += elem * (m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
                              + n * batch * (m.in_features + m.out_features))
        elif isinstance(m, nn.Conv1d):
            k = m.kernel_size[0]
            flops += 2.0 * m.out_channels * (m.in_channels // m.groups) * k * n * batch
            nbytes += elem * (m.weight.numel() + n * batch * (m.in_channels + m.out_channels))
    return Cost(flops, nbytes)


# ------------------------------------------------------------------------------------------------ attention pairs
def _tri(m: int) -> int:
    return m * (m + 1) // 2


def _sum_min_plus1(m: int, w: int) -> int:
    """sum_{t=0}^{m-1} min(t + 1, w)."""
    if m <= w:
        return _tri(m)
    return _tri(w) + (m - w) * w


def _sum_min(m: int, c: int) -> int:
    """sum_{t=0}^{m-1} min(t, c)."""
    if m <= c + 1:
        return m * (m - 1) // 2
    return c * (c + 1) // 2 + (m - c - 1) * c


def _sum_mod_plus1(m: int, w: int) -> int:
    """sum_{t=0}^{m-1} ((t mod w) + 1)."""
    q, r = divmod(m, w)
    return q * _tri(w) + _tri(r)


def attention_pairs(kind: str, window: int | None, causal: bool, n: int, ctx: int = 0) -> int:
    """Visible (query, key) pairs for queries at positions ``[ctx, ctx + n)`` over keys ``[0, ctx + n)``.

    ``kind``: ``"full"``, ``"swa"`` (causal ``t - w < s <= t``; non-causal ``|s - t| < w``) or ``"local"``
    (same block of ``w``; causal ``s <= t`` inside it); see :mod:`seqmix.ops.attention`.
    """
    a, b = ctx, ctx + n
    if not causal and ctx:
        raise ValueError("non-causal attention has no carried context")
    if kind == "full":
        return n * n if not causal else _tri(b) - _tri(a)
    if kind == "swa":
        if causal:
            return _sum_min_plus1(b, window) - _sum_min_plus1(a, window)
        return 2 * _sum_min(n, window - 1) + n
    if kind == "local":
        if causal:
            return _sum_mod_plus1(b, window) - _sum_mod_plus1(a, window)
        q, r = divmod(n, window)
        return q * window * window + r * r
    raise ValueError(f"unknown attention kind {kind!r}")


# ------------------------------------------------------------------------------------------------ TTT
def ttt_minibatch_flops(kind: str, n: int, K: int, F: int, causal: bool,
                        form: Literal["torch", "kernel"] = "torch") -> float:
    """Matrix-product FLOPs of one forward TTT mini-batch of ``n`` tokens for one head (inner model ``K -> F -> K``;
    TTT-Linear: one ``K x F`` layer with ``F = K``).

    Non-causal (primal) form, the same in both implementations: inner forward on the keys, gradient, update and
    read-out with the updated weights. TTT-Linear ``Z = X W`` (2nKF), update ``X^T (lw G)`` (2nKF), read-out
    ``Q W`` (2nKF): ``6 n K F``. TTT-MLP ``Z1 = X W1``, ``Z2 = A W2``, ``P = G2 W2^T``, the two updates, ``Q W1``,
    ``Aq W2``: ``14 n K F``.

    The causal (dual) read-out adds ``n x n`` products, and here the two implementations differ:

    * ``form="torch"`` (:func:`seqmix.ops.ttt.ttt_scan`): per inner layer ``S = Q X^T``, ``(E * S) G`` and
      ``E G`` as three products: linear ``+ 6 n^2 K``, MLP ``+ 6 n^2 (K + F)``.
    * ``form="kernel"`` (:mod:`seqmix.kernels.ttt_triton`): ``S = Q X^T`` and one fused ``(E * (S + 1)) G``:
      linear ``+ 2 n^2 (K + F)``, MLP ``+ 4 n^2 (K + F)``.
    """
    if form not in ("torch", "kernel"):
        raise ValueError(f"form must be 'torch' or 'kernel', got {form!r}")
    if kind == "linear":
        primal = 6.0 * n * K * F
        dual = (6.0 * n * n * K) if form == "torch" else 2.0 * n * n * (K + F)
    elif kind == "mlp":
        primal = 14.0 * n * K * F
        dual = (6.0 if form == "torch" else 4.0) * n * n * (K + F)
    else:
        raise ValueError(f"kind must be 'linear' or 'mlp', got {kind!r}")
    return primal + (dual if causal else 0.0)
