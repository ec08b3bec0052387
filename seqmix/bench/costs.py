"""Analytic FLOP and byte counts per layer and mode: the cost model behind the roofline fractions.

These are ESTIMATES, written to show how cost grows with T and to put measured times next to the machine's ceilings;
they are not operation counts of any one implementation.

FLOPs count matrix-product work only (2 per multiply-add): every ``nn.Linear`` / ``nn.Conv1d`` of the layer (the
projections, short convolutions) plus the mixer core of its family. Element-wise work (softmax, norms, gates,
activations) is left out. Per family, for ``n`` new tokens per sequence (legend: H heads, K key / head dim,
V value head dim, F inner width, b mini-batch, Q / C chunk, N state dim, P Mamba head dim, w window):

* attention (``swa``, ``full_attn``, ``local_attn``): ``4 H K`` per visible (query, key) pair (``Q K^T`` and
  ``P V``); pairs are counted exactly from the visibility rule (non-causal full: T^2; swa: ~T (2w - 1);
  local: ~T w), so full attention grows as T^2 and the windowed kinds as T once T >> w.
* TTT, per head and mini-batch of ``s`` tokens, inner model ``K -> F -> K`` (linear: one ``K x K`` layer):
  non-causal (primal) form, linear ``6 s K^2``, MLP ``14 s K F`` (inner forward, gradient, update, read-out);
  causal dual form adds the ``s x s`` products: linear ``+ 6 s^2 K``, MLP ``+ s^2 (6 K + 6 F)``; plus the
  learning-rate gate ``2 D H`` per token. A causal call after ``p`` pending tokens re-feeds them (as the layer does).
* Mamba2 (SSD, chunked, chunks of Q): per head and chunk ``2 Q^2 (N + P) + 4 Q P N`` (intra-chunk scores and
  outputs, chunk states, state read-out); one decode token (recurrent step) ``4 P N``.
* Gated DeltaNet (WY / UT chunked, chunks of C): per value head and chunk ``C^2 (5 K + 3 V) + 6 C K V``
  (``K K^T``, the triangular solve, ``Q K^T``, intra-chunk output, state read / write); a decode token is a chunk of 1.
* identity: no FLOPs.

Bytes are the traffic an ideal implementation cannot avoid: parameters read once per call, the layer input and
output, the inputs and outputs of every projection and of the mixer core, the carried state read and written
once per call, and for chunked / mini-batch forms one materialised state per chunk (what fla, mamba-ssm and the TTT
kernels store for the backward). Activations count at the layer's dtype, mixer-core tensors and states at fp32.

Modes: ``fwd`` = one forward over T tokens; ``fwd+bwd`` = 3x the forward FLOPs and bytes (backward ~ 2x forward);
``decode`` = one token after a context of T (mean over the timed steps); ``decode-frame`` = one call of
``frame_tokens`` tokens after a context of T (mean over the timed frames).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["Cost", "layer_cost", "mode_cost", "attention_pairs", "dit_cost", "COST_MODELS"]

_FP32 = 4


@dataclass(frozen=True)
class Cost:
    """FLOPs (matmul work, 2 per multiply-add) and bytes moved; ``model`` names the family formula used."""

    flops: float
    bytes: float
    model: str = ""

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.flops + other.flops, self.bytes + other.bytes, self.model or other.model)

    def scale(self, k: float) -> "Cost":
        return Cost(self.flops * k, self.bytes * k, self.model)


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


# ------------------------------------------------------------------------------------------------ per family
def _projections(layer: nn.Module, n: int, batch: int, elem: int) -> Cost:
    """Every nn.Linear / nn.Conv1d: ``2 in out`` FLOPs per token; weights once + inputs and outputs per token."""
    flops = 0.0
    nbytes = 0.0
    for m in layer.modules():
        if isinstance(m, nn.Linear):
            flops += 2.0 * m.in_features * m.out_features * n * batch
            nbytes += elem * (m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
                              + n * batch * (m.in_features + m.out_features))
        elif isinstance(m, nn.Conv1d):
            k = m.kernel_size[0]
            flops += 2.0 * m.out_channels * (m.in_channels // m.groups) * k * n * batch
            nbytes += elem * (m.weight.numel() + n * batch * (m.in_channels + m.out_channels))
    return Cost(flops, nbytes)


def _attention_core(layer, n: int, ctx: int, batch: int, elem: int) -> Cost:
    H, K = layer.num_heads, layer.head_dim
    causal = layer.causal
    pairs = attention_pairs(layer.kind, layer.window, causal, n, ctx)
    flops = 4.0 * H * K * pairs * batch
    if ctx:
        cached = {"full": ctx, "swa": min(ctx, (layer.window or 1) - 1), "local": ctx % (layer.window or 1)}[layer.kind]
    else:
        cached = 0
    # q, k, v of the new tokens read, o written, the visible KV cache read
    nbytes = elem * batch * H * K * (4 * n + 2 * cached)
    return Cost(flops, nbytes, f"attention[{layer.kind}]: 4 H K x visible pairs")


def _ttt_mb_flops(kind: str, s: int, K: int, F: int, dual: bool) -> float:
    if kind == "linear":
        return 6.0 * s * K * K + (6.0 * s * s * K if dual else 0.0)
    return 14.0 * s * K * F + (s * s * (6.0 * K + 6.0 * F) if dual else 0.0)


def _ttt_core(layer, n: int, ctx: int, batch: int, elem: int) -> Cost:
    c = layer.config
    H, K, b = layer.num_heads, layer.head_dim, c.mini_batch_size
    kind = layer.kind
    F = K if kind == "linear" else c.mlp_expansion * K
    state = sum(p.numel() for p in layer.inner_params().values())  # H x (weights + biases)
    dual = bool(c.causal)
    pending = ctx % b if c.causal else 0
    m = pending + n  # tokens the scan runs over (pending ones are re-fed)
    full, rem = divmod(m, b)
    per_head = full * _ttt_mb_flops(kind, b, K, F, dual) + (_ttt_mb_flops(kind, rem, K, F, dual) if rem else 0.0)
    flops = H * batch * per_head + 2.0 * layer.dim * H * n * batch  # + lr gate
    mbs = full + (1 if rem else 0)
    # q, k, r read (+ eta), z written; state read once, one state per mini-batch written (fp32)
    nbytes = _FP32 * batch * (H * m * (3 * K + 1) + H * n * K + state * (1 + mbs))
    form = "dual" if dual else "primal"
    return Cost(flops, nbytes, f"ttt[{kind},{form}]: per mini-batch of b={b}")


def _mamba2_core(layer, n: int, ctx: int, batch: int, elem: int) -> Cost:
    H, P, N, G = layer.nheads, layer.headdim, layer.d_state, layer.ngroups
    Q = layer.config.chunk_size
    state = H * P * N
    if n == 1 and ctx:
        flops = 4.0 * H * P * N * batch
        chunks = 0
    else:
        chunks = math.ceil(n / Q)
        flops = chunks * H * (2.0 * Q * Q * (N + P) + 4.0 * Q * P * N) * batch
    nbytes = _FP32 * batch * (n * (2 * H * P + H + 2 * G * N) + state * (2 + chunks))
    return Cost(flops, nbytes, f"ssd: chunks of Q={Q}")


def _gdn_core(layer, n: int, ctx: int, batch: int, elem: int) -> Cost:
    H, HV, K, V = layer.num_heads, layer.num_v_heads, layer.head_k_dim, layer.head_v_dim
    C = min(layer.config.chunk_size, n)
    chunks = math.ceil(n / C)
    flops = chunks * HV * (C * C * (5.0 * K + 3.0 * V) + 6.0 * C * K * V) * batch
    state = HV * K * V
    nbytes = _FP32 * batch * (n * (2 * H * K + 2 * HV * V + 2 * HV) + state * (2 + chunks))
    return Cost(flops, nbytes, f"delta rule: chunks of C={layer.config.chunk_size}")


def _lact_core(layer, n: int, ctx: int, batch: int, elem: int) -> Cost:
    """Per head and token: 4 K F (f(k)), 8 K F (update), 6 K F (read-out); Newton-Schulz once per update."""
    c = layer.config
    H, K, F, C = layer.num_heads, layer.head_dim, layer.hidden, c.chunk_size
    pending = ctx % C if c.causal else 0
    m = pending + n  # tokens the scan runs over (pending ones are re-fed)
    updates = m // C if c.causal else math.ceil(m / C)
    lo, hi = min(K, F), max(K, F)
    muon = 3 * c.muon_steps * (4.0 * lo * lo * hi + 2.0 * lo ** 3) if c.muon else 0.0
    flops = H * batch * (18.0 * K * F * m + updates * muon)
    state = layer.state_size()
    # q, k, v and three rates read (fp32), o written; the fast weights read and written once per update
    nbytes = _FP32 * batch * (H * m * (3 * K + 3) + H * n * K + state * (1 + updates))
    return Cost(flops, nbytes, f"lact: 18 K F per token, chunks of C={C}")


def _identity_core(layer, n: int, ctx: int, batch: int, elem: int) -> Cost:
    return Cost(0.0, 0.0, "identity: no core (its traffic is the layer's input read and output written)")


#: registry name -> core cost ``fn(layer, n_new_tokens, context_tokens, batch, elem_bytes) -> Cost``. A family not
#: listed gets its projections only (logged once); add its formula here when adding a mixer.
COST_MODELS: dict[str, Callable[..., Cost]] = {
    "swa": _attention_core,
    "full_attn": _attention_core,
    "local_attn": _attention_core,
    "ttt_linear": _ttt_core,
    "ttt_mlp": _ttt_core,
    "mamba2": _mamba2_core,
    "gated_deltanet": _gdn_core,
    "identity": _identity_core,
    "lact": _lact_core,
}
_WARNED: set[str] = set()


def layer_cost(layer: nn.Module, n: int, ctx: int = 0, batch: int = 1) -> Cost:
    """Cost of one call of ``layer`` on ``n`` new tokens per sequence after ``ctx`` tokens of carried context."""
    p = next(layer.parameters(), None)
    elem = p.element_size() if p is not None else torch.tensor([], dtype=torch.float32).element_size()
    core_fn = COST_MODELS.get(getattr(layer, "name", ""))
    if core_fn is None:
        if layer.name not in _WARNED:
            _WARNED.add(layer.name)
            logger.warning("no cost model for mixer %r: counting its projections only", layer.name)
        core = Cost(0.0, 0.0, "projections only")
    else:
        core = core_fn(layer, n, ctx, batch, elem)
    params = sum(q.numel() for q in layer.parameters())
    io = Cost(0.0, float(elem * batch * n * layer.dim * 2))  # layer input read, output written
    proj = _projections(layer, n, batch, elem)
    # non-Linear parameters (gates, norms, inner-model init) are read once
    lin = sum(q.numel() for m in layer.modules() if isinstance(m, (nn.Linear, nn.Conv1d)) for q in m.parameters())
    rest = Cost(0.0, float(elem * (params - lin)))
    total = core + proj + io + rest
    return Cost(total.flops, total.bytes, core.model)


def mode_cost(layer: nn.Module, mode: str, T: int, batch: int = 1, *, steps: int = 1, frame_tokens: int = 1) -> Cost:
    """Cost of one timed unit of ``mode`` (see the module docstring): a call (fwd, fwd+bwd), a decode token after
    a context of ``T`` (mean over ``steps`` steps) or a decode frame of ``frame_tokens`` (mean over ``steps`` frames)."""
    if mode == "fwd":
        return layer_cost(layer, T, 0, batch)
    if mode == "fwd+bwd":
        return layer_cost(layer, T, 0, batch).scale(3.0)
    if mode in ("decode", "decode-frame"):
        n = 1 if mode == "decode" else frame_tokens
        costs = [layer_cost(layer, n, T + i * n, batch) for i in range(max(1, steps))]
        return Cost(sum(c.flops for c in costs) / len(costs), sum(c.bytes for c in costs) / len(costs),
                    costs[0].model)
    raise ValueError(f"unknown mode {mode!r}; valid: fwd, fwd+bwd, decode, decode-frame")


def dit_cost(model: nn.Module, layout, mode: str = "fwd", batch: int = 1) -> Cost:
    """Cost of one SegmentedDiT call over ``layout`` (``mode`` ``fwd`` or ``fwd+bwd`` = 3x): per block the window
    attention (Q/K/V/O projections on every token, ``4 H K`` per pair inside each of the S windows of
    ``L + 13 N`` tokens), the MLP on every token and the global layer (both directions: 2x the mixer's
    :func:`layer_cost` over all T tokens). Embeddings, adaLN modulation and the output head are left out (small)."""
    T = layout.total_tokens
    W = layout.window_tokens
    total = Cost(0.0, 0.0, "dit")
    for block in model.transformer_blocks:
        attn = block.attn1
        p = next(attn.parameters())
        elem = p.element_size()
        total = total + _projections(attn, T, batch, elem) + _projections(block.ff, T, batch, elem)
        pairs = layout.num_segments * W * W
        total = total + Cost(4.0 * attn.heads * attn.head_dim * pairs * batch,
                             elem * batch * attn.heads * attn.head_dim * 4 * layout.num_segments * W)
        if block.global_layer is not None:
            total = total + layer_cost(block.global_layer.mixer, T, 0, batch).scale(2.0)
    if mode == "fwd+bwd":
        total = total.scale(3.0)
    elif mode != "fwd":
        raise ValueError(f"unknown DiT mode {mode!r}; valid: fwd, fwd+bwd")
    return Cost(total.flops, total.bytes, "dit: window attention + MLP + 2 x global layer per block")
