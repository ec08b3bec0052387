"""Fused Triton kernels for TTT-Linear and TTT-MLP scans (forward and backward), for any CUDA GPU Triton supports.

Paper: Dalal, Hussein et al. 2025, "One-Minute Video Generation with Test-Time Training" (arXiv 2504.05298);
TTT layers: Sun et al. 2024 (arXiv 2407.04620). Reference math: :mod:`seqmix.ops.ttt` (``ttt_scan`` dual form and
``ttt_scan_naive``); the plain-PyTorch twin with the kernels' loop structure and hand-written backward is
:mod:`seqmix.kernels.ttt_ref` (its docstring carries the derivation, repeated in short above the backward kernels).

Design:

* One program per (batch, head) walks the whole sequence, mini-batch by mini-batch, with fp32 inner state.
  TTT-Linear keeps W1 [K, K], b1 in registers across mini-batches. TTT-MLP's state (W1 [K, F], W2 [F, K]: 128 KiB
  at K = 64, F = 256) cannot sit in one program's registers beside its [N, F] activations, so the MLP kernels keep it
  in a per-program fp32 working buffer (global memory; L2-resident at paper sizes) and stream it in chunks of BF
  hidden units, two passes per mini-batch (Z2 needs every chunk before the LN gradient G2 exists).
* Matrix products use ``tl.dot`` on fp32 operands (bf16 / fp16 inputs are cast on load) with TF32 products by
  default on GPU (:func:`dot_precision`); LN statistics, inner gradients, states and accumulations are fp32.
* Mini-batches of N tokens are padded to BN = next power of two (>= 16 on GPU, as ``tl.dot`` needs) and masked,
  which also handles the ragged last mini-batch (n < N tokens: its read-out uses the mean over its n tokens; its
  state update is not applied to the returned state, exactly as ``ttt_scan``).
* Forward saves the state every G mini-batches (``checkpoint_group``) when gradients are needed. Backward walks
  the checkpoint groups in reverse: it recomputes the group's per-mini-batch states from its checkpoint into a
  per-program scratch buffer (G states), then steps back through the group's mini-batches, recomputing each
  mini-batch's forward quantities and applying the hand-derived backward. Every mini-batch's forward is thus
  recomputed once; memory is O(T / (N G) + G) states per (batch, head).
* Non-causal (video) read-out uses the updated state (primal form, equal to the dual form there); causal
  (language) read-out uses the dual form with the step matrix ``E[i, j] = eta_j / (i + 1)`` (``j <= i``).
* A launch that does not fit the GPU (``OutOfResources``: shared memory grows with BN x K and BN x BN operand
  tiles; e.g. the causal TTT-MLP backward at K = 64, N = 64, or K = 128 with N = 64, on an H100, by offline ptxas
  compiles for sm_90a) runs the PyTorch twin instead, warned once per shape.

Limits: one program per (batch, head) means B * H programs (48 at the paper's B = 1): fewer than an H100's 132 SMs.

Shapes (legend): B batch, H heads, T tokens, K head dim, F inner width, N mini-batch size, BN padded mini-batch,
BF hidden chunk, G mini-batches per checkpoint group. Kernels see q, k, r as [B*H, T, K], eta as [B*H, T], states as
[B*H, K, F] / [B*H, F] / [B*H, F, K] / [B*H, K], LN weight/bias as [H, K].

Interpreter (CPU tests): set ``TRITON_INTERPRET=1`` before importing this module; the kernels use no tensor
methods on loop indices and a single launch config there, so they need no interpreter patch.
"""

from __future__ import annotations

import logging
import os

import torch
import triton
import triton.language as tl

from seqmix.ops.ttt import check_scan_inputs
from seqmix.utils.triton_compat import triton_interpreter

from .ttt_ref import default_checkpoint_group, ttt_scan_manual_bwd, ttt_scan_manual_fwd

try:
    from triton.runtime.errors import OutOfResources
except ImportError:  # pragma: no cover - another Triton layout
    class OutOfResources(Exception):  # noqa: N818 - stands in for Triton's
        pass

logger = logging.getLogger(__name__)

__all__ = [
    "SUPPORTED_HEAD_DIMS",
    "TTTScanFunction",
    "check_supported",
    "dot_precision",
    "ttt_scan_triton",
]

_INTERPRET = triton_interpreter()  # fixed at import: @triton.jit reads the mode when the kernels are defined

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
MAX_INNER_WIDTH = 512  # F = 4K at K = 128
MAX_MINI_BATCH = 128



# ------------------------------------------------------------------------------------------------ elementwise
# GELU_tanh constants written as literals (c = sqrt(2/pi) = 0.7978845608028654, a = 0.044715, 3 a = 0.134145,
# 3 a c = 0.10703222440890037): constexpr globals times a tensor do not work under the interpreter.
@triton.jit
def _gelu_sig(x):
    # GELU_tanh(x) = 0.5 x (1 + tanh(u)) = x sigmoid(2u), u = c (x + a x^3): no tanh needed, stable for any x.
    # (1 / (1 + exp(-y)) written out: tl.sigmoid is not usable under the interpreter; exp overflow gives 0, fine)
    return 1.0 / (1.0 + tl.exp(-2.0 * (0.7978845608028654 * (x + 0.044715 * x * x * x))))


@triton.jit
def _gelu(x):
    return x * _gelu_sig(x)


@triton.jit
def _gelu_d1(x):
    # GELU' = 0.5 (1 + t) + 0.5 x (1 - t^2) u' with t = 2 s - 1, 1 - t^2 = 4 s (1 - s), u' = c (1 + 3 a x^2)
    s = _gelu_sig(x)
    du = 0.7978845608028654 * (1.0 + 0.134145 * x * x)
    return s + 2.0 * x * s * (1.0 - s) * du


@triton.jit
def _gelu_d2(x):
    # GELU'' = (1 - t^2) (u' - x t u'^2 + 3 a c x^2)
    s = _gelu_sig(x)
    du = 0.7978845608028654 * (1.0 + 0.134145 * x * x)
    t = 2.0 * s - 1.0
    return 4.0 * s * (1.0 - s) * (du - x * t * du * du + 0.10703222440890037 * x * x)


@triton.jit
def _lnl2_fwd(z, r, w, b, K: tl.constexpr, eps):
    """Row-wise gradient w.r.t. z of 1/2 ||LN(z) w + b - r||^2 (biased variance, eps inside the sqrt).

    z, r: [BN, K]; w, b: [K]. Returns (g, xh, rstd, gx, e) with xh = (z - mean) rstd, e = xh w + b - r, gx = e w,
    g = rstd (gx - mean(gx) - xh mean(gx xh)).
    """
    mu = tl.sum(z, axis=1) / K
    zc = z - mu[:, None]
    rstd = 1.0 / tl.sqrt(tl.sum(zc * zc, axis=1) / K + eps)
    xh = zc * rstd[:, None]
    e = xh * w[None, :] + b[None, :] - r
    gx = e * w[None, :]
    g = rstd[:, None] * (gx - (tl.sum(gx, axis=1) / K)[:, None] - xh * (tl.sum(gx * xh, axis=1) / K)[:, None])
    return g, xh, rstd, gx, e


@triton.jit
def _lnl2_bwd(dg, g, xh, rstd, gx, e, w, K: tl.constexpr):
    """Backward of _lnl2_fwd: dg [BN, K] -> (dz [BN, K], dr [BN, K], dw [K], db [K]) (dw, db summed over rows).

    With u = rstd dg:  dgx = u - mean(u) - xh mean(u xh);  dxh = -u mean(gx xh) - gx mean(u xh) + dgx w^2;
    dw = sum(dgx (e + w xh)), db = sum(dgx w), dr = -dgx w;
    dz = rstd (dxh - mean(dxh) - xh (mean(dxh xh) + mean(dg g)))   (the last term: g is linear in rstd).
    """
    u = rstd[:, None] * dg
    m_uxh = tl.sum(u * xh, axis=1) / K
    dgx = u - (tl.sum(u, axis=1) / K)[:, None] - xh * m_uxh[:, None]
    c = tl.sum(gx * xh, axis=1) / K
    dxh = -u * c[:, None] - gx * m_uxh[:, None] + dgx * (w * w)[None, :]
    dw = tl.sum(dgx * (e + w[None, :] * xh), axis=0)
    db = tl.sum(dgx * w[None, :], axis=0)
    dr = -dgx * w[None, :]
    m_dxh = tl.sum(dxh, axis=1) / K
    m2 = tl.sum(dxh * xh, axis=1) / K + tl.sum(dg * g, axis=1) / K
    dz = rstd[:, None] * (dxh - m_dxh[:, None] - xh * m2[:, None])
    return dz, dr, dw, db


@triton.jit
def _causal_steps(eta, rows, n_act):
    """E [BN, BN]: E[i, j] = eta_j / (i + 1) for j <= i < n_act (token-position weighting), else 0.
    Also returns P [BN, BN] = 1 / (i + 1) on the same support (dE/deta_j, row by row)."""
    keep = (rows[None, :] <= rows[:, None]) & (rows[:, None] < n_act)
    pos = 1.0 / (rows + 1).to(tl.float32)
    P = tl.where(keep, pos[:, None], 0.0)
    return P * eta[None, :], P


# ---------------------------------------------------------------------------------------------- load / store
@triton.jit
def _load_rows(ptr, base, t0, rows, cols, n_act, D: tl.constexpr):
    """Rows [t0, t0 + BN) of a [T, D] slab starting at ptr + base, zero past n_act, as fp32."""
    offs = base + (t0 + rows).to(tl.int64)[:, None] * D + cols[None, :]
    return tl.load(ptr + offs, mask=(rows < n_act)[:, None], other=0.0).to(tl.float32)


@triton.jit
def _store_rows(ptr, base, t0, rows, cols, n_act, val, D: tl.constexpr):
    offs = base + (t0 + rows).to(tl.int64)[:, None] * D + cols[None, :]
    tl.store(ptr + offs, val.to(ptr.dtype.element_ty), mask=(rows < n_act)[:, None])


@triton.jit
def _load_vec(ptr, base, t0, rows, n_act):
    return tl.load(ptr + base + (t0 + rows).to(tl.int64), mask=rows < n_act, other=0.0).to(tl.float32)


@triton.jit
def _mat_offs(R: tl.constexpr, C: tl.constexpr):
    return tl.arange(0, R)[:, None] * C + tl.arange(0, C)[None, :]


# ------------------------------------------------------------------------------------ mini-batch state update
@triton.jit
def _linear_update(W1, b1, x, r, eta, n_act, rows, lnw, lnb, eps, K: tl.constexpr, PREC: tl.constexpr):
    """One inner gradient step of TTT-Linear on keys x [BN, K]: W1' = W1 - x^T (lw G), b1' = b1 - 1^T (lw G)."""
    Z = tl.dot(x, W1, input_precision=PREC) + b1[None, :]
    G, xh, rstd, gx, e = _lnl2_fwd(Z, r, lnw, lnb, K, eps)
    G = tl.where((rows < n_act)[:, None], G, 0.0)
    lwG = (eta / n_act)[:, None] * G
    W1n = W1 - tl.dot(tl.trans(x), lwG, input_precision=PREC)
    b1n = b1 - tl.sum(lwG, axis=0)
    return W1n, b1n, G


# -------------------------------------------------------------------------------------------------- forward
def _configs(mlp: bool = False):
    """Launch configs to autotune over; the kernels are idempotent (they never read what they write before writing
    it), so the autotuner may rerun them. One config under the interpreter (it cannot benchmark; the TTT-MLP chunk
    width BF is then passed by the wrapper) and when ``SEQMIX_TTT_NUM_WARPS`` / ``SEQMIX_TTT_BLOCK_F`` pin it (read
    at import). For TTT-MLP the autotuner also picks BF, the hidden chunk: configs that do not fit in shared memory
    (OutOfResources) are dropped by the autotuner, so the choice adapts to the GPU and to Triton's allocator.
    """
    if _INTERPRET:
        return [triton.Config({}, num_warps=4, num_stages=1)]
    warps = os.environ.get("SEQMIX_TTT_NUM_WARPS")
    bf = os.environ.get("SEQMIX_TTT_BLOCK_F")
    if not mlp:
        return [triton.Config({}, num_warps=int(w), num_stages=1) for w in ([warps] if warps else (4, 8))]
    combos = [(64, 8), (32, 8), (16, 8), (32, 4)]
    if warps or bf:
        combos = [(int(bf or 32), int(warps or 8))]
    return [triton.Config({"BF": b}, num_warps=w, num_stages=1) for b, w in combos]


def _prune_block_f(configs, named_args, **kwargs):
    """Keep TTT-MLP configs whose hidden chunk BF divides the inner width F."""
    F = kwargs.get("F", named_args.get("F"))
    keep = [c for c in configs if c.kwargs.get("BF", 0) <= F]
    return keep or [triton.Config({"BF": F}, num_warps=configs[0].num_warps, num_stages=1)]


@triton.autotune(configs=_configs(), key=["K", "F", "BN", "CAUSAL", "SAVE", "PREC"])
@triton.jit
def _ttt_linear_fwd_kernel(
    Q, X, R, ETA, LNW, LNB,  # [BH, T, K] x3, [BH, T], [H, K] x2
    W1_0, B1_0,  # initial state [BH, K, F], [BH, F]
    Z, W1_T, B1_T,  # outputs: z [BH, T, K], boundary state
    CK_W1, CK_B1,  # checkpoints [BH, n_grp, K, F], [BH, n_grp, F]
    T, N, n_mb, n_grp, G, H, eps,
    K: tl.constexpr, F: tl.constexpr, BN: tl.constexpr, CAUSAL: tl.constexpr, SAVE: tl.constexpr,
    PREC: tl.constexpr,
):
    pid = tl.program_id(0)
    bh = pid.to(tl.int64)
    h = pid % H
    rows = tl.arange(0, BN)
    ck = tl.arange(0, K)
    cf = tl.arange(0, F)
    KF = _mat_offs(K, F)
    lnw = tl.load(LNW + h * K + ck).to(tl.float32)
    lnb = tl.load(LNB + h * K + ck).to(tl.float32)
    W1 = tl.load(W1_0 + bh * K * F + KF)
    b1 = tl.load(B1_0 + bh * F + cf)
    base = bh * T * K
    ebase = bh * T
    for g in range(n_grp):
        if SAVE:
            tl.store(CK_W1 + (bh * n_grp + g) * K * F + KF, W1)
            tl.store(CK_B1 + (bh * n_grp + g) * F + cf, b1)
        m_end = tl.minimum(g * G + G, n_mb)
        for m in range(g * G, m_end):
            t0 = m * N
            n_act = tl.minimum(T - t0, N)
            x = _load_rows(X, base, t0, rows, ck, n_act, K)
            r = _load_rows(R, base, t0, rows, ck, n_act, K)
            q = _load_rows(Q, base, t0, rows, ck, n_act, K)
            eta = _load_vec(ETA, ebase, t0, rows, n_act)
            W1n, b1n, Gr = _linear_update(W1, b1, x, r, eta, n_act, rows, lnw, lnb, eps, K, PREC)
            if CAUSAL:
                # dual form: z_i = q_i W1 + b1 - sum_j E_ij (q_i . x_j + 1) g_j
                E, P = _causal_steps(eta, rows, n_act)
                S = tl.dot(q, tl.trans(x), input_precision=PREC)
                zq = tl.dot(q, W1, input_precision=PREC) + b1[None, :] - tl.dot(E * (S + 1.0), Gr, input_precision=PREC)
            else:
                zq = tl.dot(q, W1n, input_precision=PREC) + b1n[None, :]
            _store_rows(Z, base, t0, rows, ck, n_act, zq, K)
            upd = n_act == N  # a ragged last mini-batch does not advance the returned state
            W1 = tl.where(upd, W1n, W1)
            b1 = tl.where(upd, b1n, b1)
    tl.store(W1_T + bh * K * F + KF, W1)
    tl.store(B1_T + bh * F + cf, b1)


# ---------------------------------------------------------------------------------------------- TTT-MLP helpers
# TTT-MLP's state (W1 [K, F], W2 [F, K]: 128 KiB in fp32 at K = 64, F = 256) does not fit in one program's
# registers next to its [BN, F] activations, so the MLP kernels keep the state in a per-program fp32 working buffer
# (global memory, L2-resident) and stream it in chunks of BF hidden units: every quantity the backward or the
# LayerNorm needs over all of F is a sum over chunks (Z2 = sum_c A_c W2_c, the S2 / dM1 / dG2 accumulations).
@triton.jit
def _w1_offs(f0, K: tl.constexpr, F: tl.constexpr, BF: tl.constexpr):
    return tl.arange(0, K)[:, None] * F + f0 + tl.arange(0, BF)[None, :]  # chunk [K, BF] of a [K, F] matrix


@triton.jit
def _w2_offs(f0, K: tl.constexpr, BF: tl.constexpr):
    return (f0 + tl.arange(0, BF))[:, None] * K + tl.arange(0, K)[None, :]  # chunk [BF, K] of a [F, K] matrix


@triton.jit
def _mlp_copy_state(S_W1, S_B1, S_W2, S_B2, D_W1, D_B1, D_W2, D_B2,
                    K: tl.constexpr, F: tl.constexpr, BF: tl.constexpr):
    ck = tl.arange(0, K)
    for c in range(F // BF):
        f0 = c * BF
        tl.store(D_W1 + _w1_offs(f0, K, F, BF), tl.load(S_W1 + _w1_offs(f0, K, F, BF)))
        tl.store(D_B1 + f0 + tl.arange(0, BF), tl.load(S_B1 + f0 + tl.arange(0, BF)))
        tl.store(D_W2 + _w2_offs(f0, K, BF), tl.load(S_W2 + _w2_offs(f0, K, BF)))
    tl.store(D_B2 + ck, tl.load(S_B2 + ck))
    tl.debug_barrier()


@triton.jit
def _mlp_step(
    S_W1, S_B1, S_W2, S_B2,  # state before the mini-batch (this program's [K, F], [F], [F, K], [K])
    D_W1, D_B1, D_W2, D_B2,  # where the state after it goes (may alias S_*: chunk c is read before it is written)
    x, r, q, eta, n_act, upd, rows, lnw, lnb, eps,
    K: tl.constexpr, F: tl.constexpr, BF: tl.constexpr, BN: tl.constexpr, CAUSAL: tl.constexpr,
    READOUT: tl.constexpr, PREC: tl.constexpr,
):
    """One TTT-MLP mini-batch on a streamed state; writes the updated state (the old one where ``upd`` is false)
    and returns the read-out zq [BN, K] (zeros unless READOUT)."""
    ck = tl.arange(0, K)
    cb = tl.arange(0, BF)
    rmask = (rows < n_act)[:, None]
    # pass 1: Z2 = gelu(x W1 + b1) W2 + b2, summed over hidden chunks
    Z2 = tl.zeros([BN, K], dtype=tl.float32)
    for c in range(F // BF):
        f0 = c * BF
        W1c = tl.load(S_W1 + _w1_offs(f0, K, F, BF))
        b1c = tl.load(S_B1 + f0 + cb)
        W2c = tl.load(S_W2 + _w2_offs(f0, K, BF))
        Ac = _gelu(tl.dot(x, W1c, input_precision=PREC) + b1c[None, :])
        Z2 += tl.dot(Ac, W2c, input_precision=PREC)
    b2 = tl.load(S_B2 + ck)
    Z2 += b2[None, :]
    G2, xh, rstd, gx, e = _lnl2_fwd(Z2, r, lnw, lnb, K, eps)
    G2 = tl.where(rmask, G2, 0.0)
    lw = (eta / n_act)[:, None]
    lwG2 = lw * G2
    b2n = b2 - tl.sum(lwG2, axis=0)
    zq = tl.zeros([BN, K], dtype=tl.float32)
    if READOUT:
        if CAUSAL:
            E, P = _causal_steps(eta, rows, n_act)
            M1 = E * (tl.dot(q, tl.trans(x), input_precision=PREC) + 1.0)
            S2 = tl.zeros([BN, BN], dtype=tl.float32)
    # pass 2: G1 = (G2 W2^T) * gelu'(Z1), the update, and the read-out, chunk by chunk
    for c in range(F // BF):
        f0 = c * BF
        W1c = tl.load(S_W1 + _w1_offs(f0, K, F, BF))
        b1c = tl.load(S_B1 + f0 + cb)
        W2c = tl.load(S_W2 + _w2_offs(f0, K, BF))
        Z1c = tl.dot(x, W1c, input_precision=PREC) + b1c[None, :]
        Ac = _gelu(Z1c)
        G1c = tl.dot(G2, tl.trans(W2c), input_precision=PREC) * _gelu_d1(Z1c)
        lwG1c = lw * G1c
        W1nc = W1c - tl.dot(tl.trans(x), lwG1c, input_precision=PREC)
        b1nc = b1c - tl.sum(lwG1c, axis=0)
        W2nc = W2c - tl.dot(tl.trans(Ac), lwG2, input_precision=PREC)
        if READOUT:
            if CAUSAL:  # dual form: Z1q = q W1 + b1 - M1 G1, Zq = Aq W2 + b2 - (E * (Aq A^T + 1)) G2
                Aqc = _gelu(tl.dot(q, W1c, input_precision=PREC) + b1c[None, :] - tl.dot(M1, G1c, input_precision=PREC))
                zq += tl.dot(Aqc, W2c, input_precision=PREC)
                S2 += tl.dot(Aqc, tl.trans(Ac), input_precision=PREC)
            else:
                Aqc = _gelu(tl.dot(q, W1nc, input_precision=PREC) + b1nc[None, :])
                zq += tl.dot(Aqc, W2nc, input_precision=PREC)
        tl.debug_barrier()  # every thread has read chunk c before it is overwritten (in place in the forward)
        tl.store(D_W1 + _w1_offs(f0, K, F, BF), tl.where(upd, W1nc, W1c))
        tl.store(D_B1 + f0 + cb, tl.where(upd, b1nc, b1c))
        tl.store(D_W2 + _w2_offs(f0, K, BF), tl.where(upd, W2nc, W2c))
    if READOUT:
        if CAUSAL:
            zq += b2[None, :] - tl.dot(E * (S2 + 1.0), G2, input_precision=PREC)
        else:
            zq += b2n[None, :]
    tl.store(D_B2 + ck, tl.where(upd, b2n, b2))
    tl.debug_barrier()  # the new state is visible to every thread before the next mini-batch reads it
    return zq


@triton.autotune(configs=_configs(mlp=True), key=["K", "F", "BN", "CAUSAL", "SAVE", "PREC"],
                 prune_configs_by={"early_config_prune": _prune_block_f})
@triton.jit
def _ttt_mlp_fwd_kernel(
    Q, X, R, ETA, LNW, LNB,
    W1_0, B1_0, W2_0, B2_0,  # initial state [BH, K, F], [BH, F], [BH, F, K], [BH, K]
    Z, W1_T, B1_T, W2_T, B2_T,  # outputs; the boundary-state buffers double as the working state
    CK_W1, CK_B1, CK_W2, CK_B2,  # checkpoints [BH, n_grp, ...]
    T, N, n_mb, n_grp, G, H, eps,
    K: tl.constexpr, F: tl.constexpr, BF: tl.constexpr, BN: tl.constexpr, CAUSAL: tl.constexpr,
    SAVE: tl.constexpr, PREC: tl.constexpr,
):
    pid = tl.program_id(0)
    bh = pid.to(tl.int64)
    h = pid % H
    rows = tl.arange(0, BN)
    ck = tl.arange(0, K)
    lnw = tl.load(LNW + h * K + ck).to(tl.float32)
    lnb = tl.load(LNB + h * K + ck).to(tl.float32)
    WS_W1, WS_B1, WS_W2, WS_B2 = W1_T + bh * K * F, B1_T + bh * F, W2_T + bh * F * K, B2_T + bh * K
    # copy the initial state into the working buffers (also makes the kernel idempotent for the autotuner)
    _mlp_copy_state(W1_0 + bh * K * F, B1_0 + bh * F, W2_0 + bh * F * K, B2_0 + bh * K,
                    WS_W1, WS_B1, WS_W2, WS_B2, K, F, BF)
    base = bh * T * K
    ebase = bh * T
    for g in range(n_grp):
        if SAVE:
            s = bh * n_grp + g
            _mlp_copy_state(WS_W1, WS_B1, WS_W2, WS_B2,
                            CK_W1 + s * K * F, CK_B1 + s * F, CK_W2 + s * F * K, CK_B2 + s * K, K, F, BF)
        m_end = tl.minimum(g * G + G, n_mb)
        for m in range(g * G, m_end):
            t0 = m * N
            n_act = tl.minimum(T - t0, N)
            x = _load_rows(X, base, t0, rows, ck, n_act, K)
            r = _load_rows(R, base, t0, rows, ck, n_act, K)
            q = _load_rows(Q, base, t0, rows, ck, n_act, K)
            eta = _load_vec(ETA, ebase, t0, rows, n_act)
            # a ragged last mini-batch is read out with its own update but does not advance the returned state
            zq = _mlp_step(WS_W1, WS_B1, WS_W2, WS_B2, WS_W1, WS_B1, WS_W2, WS_B2,
                           x, r, q, eta, n_act, n_act == N, rows, lnw, lnb, eps,
                           K, F, BF, BN, CAUSAL, True, PREC)
            _store_rows(Z, base, t0, rows, ck, n_act, zq, K)


# ------------------------------------------------------------------------------------------------- backward
# Per mini-batch (rows = tokens; see seqmix.kernels.ttt_ref for the full derivation), given dZq and dS' (the
# gradient of the state after the mini-batch):
#   upd = (n == N): the update receives dW' = upd dS'; a ragged tail passes (1 - upd) dS' straight through.
#   causal read-out  Zq = Q W + b - M G, M = E * (S + 1), S = Q X^T:
#       dM = -dZq G^T; dQ = dZq W^T + (dM*E) X; dX = (dM*E)^T Q; dE = dM*(S+1); dG = -M^T dZq; dW = Q^T dZq
#   non-causal read-out Zq = Q W' + b':  dW' += Q^T dZq, dQ = dZq W'^T
#   update W' = W - X^T (lw G):  d(lwG) = -X dW' - db';  dX -= (lw G) dW'^T;  dG += lw d(lwG);
#       dlw = rowsum(d(lwG) * G); identity part: dW += dW'
#   MLP: G1 = (G2 W2^T) * gelu'(Z1):  dP = dG1 gelu'(Z1), dZ1 = dG1 P gelu''(Z1), dG2 += dP W2, dW2 += dP^T G2
#   G = lnl2(Z, R): _lnl2_bwd;  Z = X W + b: dX += dZ W^T, dW += X^T dZ, db += 1^T dZ
#   deta_j = dlw_j / n + sum_i dE_ij / (i + 1)  (causal term only in the causal form)
@triton.autotune(configs=_configs(), key=["K", "F", "BN", "CAUSAL", "PREC"])
@triton.jit
def _ttt_linear_bwd_kernel(
    Q, X, R, ETA, LNW, LNB, DZ,  # inputs as in the forward; DZ [BH, T, K]
    CK_W1, CK_B1,  # forward checkpoints
    DW1_T, DB1_T,  # gradient of the boundary state [BH, K, F], [BH, F]
    SC_W1, SC_B1,  # scratch [BH, G, K, F], [BH, G, F]
    DQ, DX, DR, DETA, DLNW, DLNB,  # outputs: fp32 [BH, T, K] x3, [BH, T], [BH, K] x2
    DW1_0, DB1_0,  # gradient of the initial state
    T, N, n_mb, n_grp, G, H, eps,
    K: tl.constexpr, F: tl.constexpr, BN: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr,
):
    pid = tl.program_id(0)
    bh = pid.to(tl.int64)
    h = pid % H
    rows = tl.arange(0, BN)
    ck = tl.arange(0, K)
    cf = tl.arange(0, F)
    KF = _mat_offs(K, F)
    lnw = tl.load(LNW + h * K + ck).to(tl.float32)
    lnb = tl.load(LNB + h * K + ck).to(tl.float32)
    dW1 = tl.load(DW1_T + bh * K * F + KF)
    db1 = tl.load(DB1_T + bh * F + cf)
    dlnw = tl.zeros([K], dtype=tl.float32)
    dlnb = tl.zeros([K], dtype=tl.float32)
    base = bh * T * K
    ebase = bh * T
    for gg in range(n_grp):
        g = n_grp - 1 - gg
        m0 = g * G
        m_end = tl.minimum(m0 + G, n_mb)
        # 1. states before each mini-batch of the group -> scratch
        W1 = tl.load(CK_W1 + (bh * n_grp + g) * K * F + KF)
        b1 = tl.load(CK_B1 + (bh * n_grp + g) * F + cf)
        tl.debug_barrier()  # the previous group's reads of the scratch are done
        for m in range(m0, m_end - 1):  # inner mini-batches of a group are full (only the very last may be ragged)
            tl.store(SC_W1 + (bh * G + (m - m0)) * K * F + KF, W1)
            tl.store(SC_B1 + (bh * G + (m - m0)) * F + cf, b1)
            t0 = m * N
            x = _load_rows(X, base, t0, rows, ck, N, K)
            r = _load_rows(R, base, t0, rows, ck, N, K)
            eta = _load_vec(ETA, ebase, t0, rows, N)
            W1, b1, Gr = _linear_update(W1, b1, x, r, eta, N, rows, lnw, lnb, eps, K, PREC)
        tl.store(SC_W1 + (bh * G + (m_end - 1 - m0)) * K * F + KF, W1)
        tl.store(SC_B1 + (bh * G + (m_end - 1 - m0)) * F + cf, b1)
        tl.debug_barrier()
        # 2. reverse walk through the group
        for jj in range(m_end - m0):
            m = m_end - 1 - jj
            W1 = tl.load(SC_W1 + (bh * G + (m - m0)) * K * F + KF)
            b1 = tl.load(SC_B1 + (bh * G + (m - m0)) * F + cf)
            t0 = m * N
            n_act = tl.minimum(T - t0, N)
            rmask = (rows < n_act)[:, None]
            x = _load_rows(X, base, t0, rows, ck, n_act, K)
            r = _load_rows(R, base, t0, rows, ck, n_act, K)
            q = _load_rows(Q, base, t0, rows, ck, n_act, K)
            dzq = _load_rows(DZ, base, t0, rows, ck, n_act, K)
            eta = _load_vec(ETA, ebase, t0, rows, n_act)
            lw = eta / n_act
            updf = (n_act == N).to(tl.float32)
            # recompute the forward of this mini-batch
            Z = tl.dot(x, W1, input_precision=PREC) + b1[None, :]
            Gr, xh, rstd, gx, e = _lnl2_fwd(Z, r, lnw, lnb, K, eps)
            Gr = tl.where(rmask, Gr, 0.0)
            lwG = lw[:, None] * Gr
            if CAUSAL:
                E, P = _causal_steps(eta, rows, n_act)
                S = tl.dot(q, tl.trans(x), input_precision=PREC)
                M = E * (S + 1.0)
                dM = -tl.dot(dzq, tl.trans(Gr), input_precision=PREC)
                dS = dM * E
                dq = tl.dot(dzq, tl.trans(W1), input_precision=PREC) + tl.dot(dS, x, input_precision=PREC)
                dx = tl.dot(tl.trans(dS), q, input_precision=PREC)
                dE = dM * (S + 1.0)
                dG = -tl.dot(tl.trans(M), dzq, input_precision=PREC)
                dW1n = dW1 * updf
                db1n = db1 * updf
                dW1_in = tl.dot(tl.trans(q), dzq, input_precision=PREC) + dW1
                db1_in = tl.sum(dzq, axis=0) + db1
            else:
                W1n = W1 - tl.dot(tl.trans(x), lwG, input_precision=PREC)
                dq = tl.dot(dzq, tl.trans(W1n), input_precision=PREC)
                dW1n = tl.dot(tl.trans(q), dzq, input_precision=PREC) + dW1 * updf
                db1n = tl.sum(dzq, axis=0) + db1 * updf
                dW1_in = dW1n + dW1 * (1.0 - updf)
                db1_in = db1n + db1 * (1.0 - updf)
                dx = tl.zeros([BN, K], dtype=tl.float32)
                dG = tl.zeros([BN, F], dtype=tl.float32)
            # update path W1' = W1 - X^T (lw G), b1' = b1 - 1^T (lw G)
            dlwG = -tl.dot(x, dW1n, input_precision=PREC) - db1n[None, :]
            dx -= tl.dot(lwG, tl.trans(dW1n), input_precision=PREC)
            dG += lw[:, None] * dlwG
            dG = tl.where(rmask, dG, 0.0)
            dlw = tl.sum(dlwG * Gr, axis=1)
            # G = lnl2(Z, R), Z = X W1 + b1
            dZ, dr, dgw, dgb = _lnl2_bwd(dG, Gr, xh, rstd, gx, e, lnw, K)
            dx += tl.dot(dZ, tl.trans(W1), input_precision=PREC)
            dW1_in += tl.dot(tl.trans(x), dZ, input_precision=PREC)
            db1_in += tl.sum(dZ, axis=0)
            deta = dlw / n_act
            if CAUSAL:
                deta += tl.sum(dE * P, axis=0)
            _store_rows(DQ, base, t0, rows, ck, n_act, dq, K)
            _store_rows(DX, base, t0, rows, ck, n_act, dx, K)
            _store_rows(DR, base, t0, rows, ck, n_act, dr, K)
            tl.store(DETA + ebase + (t0 + rows).to(tl.int64), deta, mask=rows < n_act)
            dlnw += dgw
            dlnb += dgb
            dW1 = dW1_in
            db1 = db1_in
        tl.debug_barrier()
    tl.store(DW1_0 + bh * K * F + KF, dW1)
    tl.store(DB1_0 + bh * F + cf, db1)
    tl.store(DLNW + bh * K + ck, dlnw)
    tl.store(DLNB + bh * K + ck, dlnb)


@triton.autotune(configs=_configs(mlp=True), key=["K", "F", "BN", "CAUSAL", "PREC"],
                 prune_configs_by={"early_config_prune": _prune_block_f})
@triton.jit
def _ttt_mlp_bwd_kernel(
    Q, X, R, ETA, LNW, LNB, DZ,
    CK_W1, CK_B1, CK_W2, CK_B2,  # forward checkpoints [BH, n_grp, ...]
    DW1_T, DB1_T, DW2_T, DB2_T,  # gradient of the boundary state
    SC_W1, SC_B1, SC_W2, SC_B2,  # scratch: the group's per-mini-batch states [BH, G, ...]
    TMP,  # scratch [BH, BN, F]: the part of dZ1 known before dZ2 (pass 2 -> pass 3)
    DQ, DX, DR, DETA, DLNW, DLNB,
    DW1_0, DB1_0, DW2_0, DB2_0,  # gradient of the initial state; also the working gradient buffers
    T, N, n_mb, n_grp, G, H, eps,
    K: tl.constexpr, F: tl.constexpr, BF: tl.constexpr, BN: tl.constexpr, CAUSAL: tl.constexpr,
    PREC: tl.constexpr,
):
    pid = tl.program_id(0)
    bh = pid.to(tl.int64)
    h = pid % H
    rows = tl.arange(0, BN)
    ck = tl.arange(0, K)
    cb = tl.arange(0, BF)
    lnw = tl.load(LNW + h * K + ck).to(tl.float32)
    lnb = tl.load(LNB + h * K + ck).to(tl.float32)
    # working gradient of the state (dS' on entry to a mini-batch's backward, dS on exit), in place
    GW1, GB1, GW2, GB2 = DW1_0 + bh * K * F, DB1_0 + bh * F, DW2_0 + bh * F * K, DB2_0 + bh * K
    _mlp_copy_state(DW1_T + bh * K * F, DB1_T + bh * F, DW2_T + bh * F * K, DB2_T + bh * K,
                    GW1, GB1, GW2, GB2, K, F, BF)
    TMPp = TMP + bh * BN * F
    tmp_offs = rows[:, None] * F + cb[None, :]
    dlnw = tl.zeros([K], dtype=tl.float32)
    dlnb = tl.zeros([K], dtype=tl.float32)
    base = bh * T * K
    ebase = bh * T
    for gg in range(n_grp):
        g = n_grp - 1 - gg
        m0 = g * G
        m_end = tl.minimum(m0 + G, n_mb)
        # 1. the group's states: scratch slot j = state before mini-batch m0 + j
        s = bh * n_grp + g
        _mlp_copy_state(CK_W1 + s * K * F, CK_B1 + s * F, CK_W2 + s * F * K, CK_B2 + s * K,
                        SC_W1 + bh * G * K * F, SC_B1 + bh * G * F, SC_W2 + bh * G * F * K, SC_B2 + bh * G * K,
                        K, F, BF)
        for m in range(m0, m_end - 1):  # only the very last mini-batch of the sequence may be ragged
            j = bh * G + (m - m0)
            t0 = m * N
            x = _load_rows(X, base, t0, rows, ck, N, K)
            r = _load_rows(R, base, t0, rows, ck, N, K)
            eta = _load_vec(ETA, ebase, t0, rows, N)
            _mlp_step(SC_W1 + j * K * F, SC_B1 + j * F, SC_W2 + j * F * K, SC_B2 + j * K,
                      SC_W1 + (j + 1) * K * F, SC_B1 + (j + 1) * F, SC_W2 + (j + 1) * F * K, SC_B2 + (j + 1) * K,
                      x, r, x, eta, N, N == N, rows, lnw, lnb, eps, K, F, BF, BN, CAUSAL, False, PREC)
        # 2. reverse walk through the group
        for jj in range(m_end - m0):
            m = m_end - 1 - jj
            j = bh * G + (m - m0)
            S_W1, S_B1, S_W2, S_B2 = SC_W1 + j * K * F, SC_B1 + j * F, SC_W2 + j * F * K, SC_B2 + j * K
            t0 = m * N
            n_act = tl.minimum(T - t0, N)
            rmask = (rows < n_act)[:, None]
            x = _load_rows(X, base, t0, rows, ck, n_act, K)
            r = _load_rows(R, base, t0, rows, ck, n_act, K)
            q = _load_rows(Q, base, t0, rows, ck, n_act, K)
            dzq = _load_rows(DZ, base, t0, rows, ck, n_act, K)
            eta = _load_vec(ETA, ebase, t0, rows, n_act)
            lw = (eta / n_act)[:, None]
            updf = (n_act == N).to(tl.float32)
            # pass 1: recompute Z2 and the LN-L2 gradient G2
            Z2 = tl.zeros([BN, K], dtype=tl.float32)
            for c in range(F // BF):
                f0 = c * BF
                W1c = tl.load(S_W1 + _w1_offs(f0, K, F, BF))
                b1c = tl.load(S_B1 + f0 + cb)
                W2c = tl.load(S_W2 + _w2_offs(f0, K, BF))
                Z2 += tl.dot(_gelu(tl.dot(x, W1c, input_precision=PREC) + b1c[None, :]), W2c, input_precision=PREC)
            b2 = tl.load(S_B2 + ck)
            Z2 += b2[None, :]
            G2, xh, rstd, gx, e = _lnl2_fwd(Z2, r, lnw, lnb, K, eps)
            G2 = tl.where(rmask, G2, 0.0)
            lwG2 = lw * G2
            if CAUSAL:
                E, P = _causal_steps(eta, rows, n_act)
                S1 = tl.dot(q, tl.trans(x), input_precision=PREC)
                M1 = E * (S1 + 1.0)
                dM2 = -tl.dot(dzq, tl.trans(G2), input_precision=PREC)  # Zq = Aq W2 + b2 - M2 G2
                dS2 = dM2 * E
                S2 = tl.zeros([BN, BN], dtype=tl.float32)
                dM1 = tl.zeros([BN, BN], dtype=tl.float32)
            dq = tl.zeros([BN, K], dtype=tl.float32)
            dx = tl.zeros([BN, K], dtype=tl.float32)
            dG2 = tl.zeros([BN, K], dtype=tl.float32)
            dlwG2 = tl.zeros([BN, K], dtype=tl.float32)
            dlw = tl.zeros([BN], dtype=tl.float32)
            # pass 2: per hidden chunk, the read-out backward, the update path and G1's backward
            for c in range(F // BF):
                f0 = c * BF
                W1c = tl.load(S_W1 + _w1_offs(f0, K, F, BF))
                b1c = tl.load(S_B1 + f0 + cb)
                W2c = tl.load(S_W2 + _w2_offs(f0, K, BF))
                dW1c = tl.load(GW1 + _w1_offs(f0, K, F, BF))
                db1c = tl.load(GB1 + f0 + cb)
                dW2c = tl.load(GW2 + _w2_offs(f0, K, BF))
                Z1c = tl.dot(x, W1c, input_precision=PREC) + b1c[None, :]
                Ac = _gelu(Z1c)
                gd1c = _gelu_d1(Z1c)
                Pc = tl.dot(G2, tl.trans(W2c), input_precision=PREC)
                G1c = Pc * gd1c
                lwG1c = lw * G1c
                if CAUSAL:
                    Z1qc = tl.dot(q, W1c, input_precision=PREC) + b1c[None, :] - tl.dot(M1, G1c, input_precision=PREC)
                    Aqc = _gelu(Z1qc)
                    S2 += tl.dot(Aqc, tl.trans(Ac), input_precision=PREC)
                    dAqc = tl.dot(dzq, tl.trans(W2c), input_precision=PREC) + tl.dot(dS2, Ac, input_precision=PREC)
                    dAc = tl.dot(tl.trans(dS2), Aqc, input_precision=PREC)
                    dW2c_in = tl.dot(tl.trans(Aqc), dzq, input_precision=PREC) + dW2c
                    dz1qc = dAqc * _gelu_d1(Z1qc)
                    dM1 -= tl.dot(dz1qc, tl.trans(G1c), input_precision=PREC)
                    dq += tl.dot(dz1qc, tl.trans(W1c), input_precision=PREC)
                    dG1c = -tl.dot(tl.trans(M1), dz1qc, input_precision=PREC)
                    dW1c_in = tl.dot(tl.trans(q), dz1qc, input_precision=PREC) + dW1c
                    db1c_in = tl.sum(dz1qc, axis=0) + db1c
                    dW1nc = dW1c * updf
                    db1nc = db1c * updf
                    dW2nc = dW2c * updf
                else:
                    W1nc = W1c - tl.dot(tl.trans(x), lwG1c, input_precision=PREC)
                    b1nc = b1c - tl.sum(lwG1c, axis=0)
                    W2nc = W2c - tl.dot(tl.trans(Ac), lwG2, input_precision=PREC)
                    Z1qc = tl.dot(q, W1nc, input_precision=PREC) + b1nc[None, :]
                    Aqc = _gelu(Z1qc)
                    dW2nc = tl.dot(tl.trans(Aqc), dzq, input_precision=PREC) + dW2c * updf
                    dz1qc = tl.dot(dzq, tl.trans(W2nc), input_precision=PREC) * _gelu_d1(Z1qc)
                    dW1nc = tl.dot(tl.trans(q), dz1qc, input_precision=PREC) + dW1c * updf
                    db1nc = tl.sum(dz1qc, axis=0) + db1c * updf
                    dq += tl.dot(dz1qc, tl.trans(W1nc), input_precision=PREC)
                    dW1c_in = dW1nc + dW1c * (1.0 - updf)
                    db1c_in = db1nc + db1c * (1.0 - updf)
                    dW2c_in = dW2nc + dW2c * (1.0 - updf)
                    dAc = tl.zeros([BN, BF], dtype=tl.float32)
                    dG1c = tl.zeros([BN, BF], dtype=tl.float32)
                # update path: W1' = W1 - X^T (lw G1), b1' = b1 - 1^T (lw G1), W2' = W2 - A^T (lw G2)
                dlwG1c = -tl.dot(x, dW1nc, input_precision=PREC) - db1nc[None, :]
                dx -= tl.dot(lwG1c, tl.trans(dW1nc), input_precision=PREC)
                dG1c += lw * dlwG1c
                dlw += tl.sum(dlwG1c * G1c, axis=1)
                dlwG2 -= tl.dot(Ac, dW2nc, input_precision=PREC)
                dAc -= tl.dot(lwG2, tl.trans(dW2nc), input_precision=PREC)
                # G1 = P * gelu'(Z1), P = G2 W2^T
                dPc = dG1c * gd1c
                dG2 += tl.dot(dPc, W2c, input_precision=PREC)
                dW2c_in += tl.dot(tl.trans(dPc), G2, input_precision=PREC)
                # dZ1 = dG1 P gelu''(Z1) + dA gelu'(Z1), the dA part from Z2 = A W2 + b2 added in pass 3
                Uc = dG1c * Pc * _gelu_d2(Z1c) + dAc * gd1c
                tl.debug_barrier()
                tl.store(TMPp + f0 + tmp_offs, Uc)
                tl.store(GW1 + _w1_offs(f0, K, F, BF), dW1c_in)
                tl.store(GB1 + f0 + cb, db1c_in)
                tl.store(GW2 + _w2_offs(f0, K, BF), dW2c_in)
            db2 = tl.load(GB2 + ck)
            if CAUSAL:
                dE = dM2 * (S2 + 1.0) + dM1 * (S1 + 1.0)
                dS1 = dM1 * E
                dq += tl.dot(dS1, x, input_precision=PREC)
                dx += tl.dot(tl.trans(dS1), q, input_precision=PREC)
                dG2 -= tl.dot(tl.trans(E * (S2 + 1.0)), dzq, input_precision=PREC)
                db2_in = tl.sum(dzq, axis=0) + db2
                db2n = db2 * updf
            else:
                db2n = tl.sum(dzq, axis=0) + db2 * updf
                db2_in = db2n + db2 * (1.0 - updf)
            dlwG2 -= db2n[None, :]
            dG2 += lw * dlwG2
            dlw += tl.sum(dlwG2 * G2, axis=1)
            dG2 = tl.where(rmask, dG2, 0.0)
            # G2 = lnl2(Z2, R)
            dZ2, dr, dgw, dgb = _lnl2_bwd(dG2, G2, xh, rstd, gx, e, lnw, K)
            db2_in += tl.sum(dZ2, axis=0)
            tl.debug_barrier()
            tl.store(GB2 + ck, db2_in)
            tl.debug_barrier()  # TMP and the partial gradients are visible to every thread
            # pass 3: Z2 = A W2 + b2, A = gelu(Z1), Z1 = X W1 + b1
            for c in range(F // BF):
                f0 = c * BF
                W1c = tl.load(S_W1 + _w1_offs(f0, K, F, BF))
                b1c = tl.load(S_B1 + f0 + cb)
                W2c = tl.load(S_W2 + _w2_offs(f0, K, BF))
                dW1c = tl.load(GW1 + _w1_offs(f0, K, F, BF))
                db1c = tl.load(GB1 + f0 + cb)
                dW2c = tl.load(GW2 + _w2_offs(f0, K, BF))
                Uc = tl.load(TMPp + f0 + tmp_offs)
                Z1c = tl.dot(x, W1c, input_precision=PREC) + b1c[None, :]
                dZ1c = Uc + tl.dot(dZ2, tl.trans(W2c), input_precision=PREC) * _gelu_d1(Z1c)
                dZ1c = tl.where(rmask, dZ1c, 0.0)
                dx += tl.dot(dZ1c, tl.trans(W1c), input_precision=PREC)
                dW1c += tl.dot(tl.trans(x), dZ1c, input_precision=PREC)
                db1c += tl.sum(dZ1c, axis=0)
                dW2c += tl.dot(tl.trans(_gelu(Z1c)), dZ2, input_precision=PREC)
                tl.debug_barrier()
                tl.store(GW1 + _w1_offs(f0, K, F, BF), dW1c)
                tl.store(GB1 + f0 + cb, db1c)
                tl.store(GW2 + _w2_offs(f0, K, BF), dW2c)
            deta = dlw / n_act
            if CAUSAL:
                deta += tl.sum(dE * P, axis=0)
            _store_rows(DQ, base, t0, rows, ck, n_act, dq, K)
            _store_rows(DX, base, t0, rows, ck, n_act, dx, K)
            _store_rows(DR, base, t0, rows, ck, n_act, dr, K)
            tl.store(DETA + ebase + (t0 + rows).to(tl.int64), deta, mask=rows < n_act)
            dlnw += dgw
            dlnb += dgb
            tl.debug_barrier()
    tl.store(DLNW + bh * K + ck, dlnw)
    tl.store(DLNB + bh * K + ck, dlnb)


# ------------------------------------------------------------------------------------------------- wrappers
def dot_precision(device: torch.device) -> str:
    """``tl.dot`` input precision of the kernels' fp32 operands (read at every call).

    ``tf32`` on GPUs of compute capability >= 8.0: tensor-core products with a 10-bit mantissa (relative error
    ~1e-3 per product; the public Hopper kernel multiplies in bf16, 8 bits) and fp32 accumulation, states and LN
    statistics. ``SEQMIX_TTT_DOT_PRECISION=tf32x3`` gives fp32-level products (three TF32 products) and
    ``ieee`` plain fp32 FMA: both need more registers and shared memory (measured offline with ptxas for sm_90a:
    the TTT-MLP backward at head dim 64, mini-batch 64 needs ~340 KB of shared memory with tf32x3, more than an
    H100 has; ~210 KB with tf32 and 32-wide hidden chunks). Older GPUs and the interpreter: ``ieee``.
    """
    if _INTERPRET or device.type != "cuda":
        return "ieee"
    if torch.cuda.get_device_capability(device)[0] < 8:
        return "ieee"
    env = os.environ.get("SEQMIX_TTT_DOT_PRECISION")
    if env:
        if env not in ("ieee", "tf32", "tf32x3"):
            raise ValueError(f"SEQMIX_TTT_DOT_PRECISION must be ieee, tf32 or tf32x3, got {env!r}")
        return env
    return "tf32"


def _block_n(N: int) -> int:
    bn = triton.next_power_of_2(N)
    return bn if _INTERPRET else max(bn, 16)  # tl.dot needs every dim >= 16 on GPU


def _mlp_block_f(F: int) -> dict:
    """The TTT-MLP hidden chunk as a launch argument: under the interpreter min(F, 64) or ``SEQMIX_TTT_BLOCK_F``
    (tests with F > 64 stream several chunks); on GPU the autotuner chooses it (see :func:`_configs`)."""
    if not _INTERPRET:
        return {}
    return {"BF": min(F, int(os.environ.get("SEQMIX_TTT_BLOCK_F", 64)))}


_FALLBACK_WARNED: set[tuple] = set()


def _fallback(what: str, key: tuple, err: Exception) -> None:
    """A launch that does not fit this GPU (shared memory / registers) runs the PyTorch twin instead, warned once
    per shape: correct and memory-bounded (same checkpoints), but much slower."""
    if key not in _FALLBACK_WARNED:
        _FALLBACK_WARNED.add(key)
        logger.warning("TTT Triton %s kernel does not fit this GPU for (kind, K, F, N, causal) = %s (%s); running "
                       "its PyTorch twin (seqmix.kernels.ttt_ref) instead. A smaller mini_batch_size or head dim fits.",
                       what, key, str(err).splitlines()[0])


def check_supported(kind: str, K: int, F: int, mini_batch_size: int, dtype: torch.dtype, device: torch.device) -> str | None:
    """``None`` if the kernels run for these settings, else the reason they do not (used by the layer's backend
    choice and by :func:`ttt_scan_triton` to raise a clear error)."""
    if device.type == "cuda":
        pass
    elif device.type == "cpu":
        if not _INTERPRET:
            return "the TTT Triton kernels need a CUDA device (on CPU only under TRITON_INTERPRET=1, for tests)"
        if dtype == torch.bfloat16:
            return "the Triton interpreter computes bfloat16 wrongly; use float32 or float16 on CPU"
    else:
        return f"the TTT Triton kernels do not run on {device.type}"
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"the TTT Triton kernels take float32/float16/bfloat16 inputs, got {dtype} (use seqmix.ops.ttt.ttt_scan)"
    if K not in SUPPORTED_HEAD_DIMS:
        return f"head dim {K} is not supported by the TTT Triton kernels (supported: {SUPPORTED_HEAD_DIMS})"
    if kind == "linear" and F != K:
        return f"TTT-Linear state must be K x K, got K={K}, F={F}"
    if F & (F - 1) or not 16 <= F <= MAX_INNER_WIDTH:
        return f"inner width F={F} must be a power of two in [16, {MAX_INNER_WIDTH}] for the TTT Triton kernels"
    if not 1 <= mini_batch_size <= MAX_MINI_BATCH:
        return f"mini_batch_size={mini_batch_size} is outside [1, {MAX_MINI_BATCH}] for the TTT Triton kernels"
    return None


def _num_state(kind: str) -> int:
    return 2 if kind == "linear" else 4


def _state_buffers(kind, BH, n, K, F, device, empty=torch.empty):
    """[BH, n, ...] fp32 buffers for n states (checkpoints or scratch)."""
    shapes = [(K, F), (F,)] if kind == "linear" else [(K, F), (F,), (F, K), (K,)]
    return [empty(BH, n, *s, device=device, dtype=torch.float32) for s in shapes]


class TTTScanFunction(torch.autograd.Function):
    """Autograd wrapper of the fused kernels. ``apply(q, k, r, eta, ln_w, ln_b, opts, *state) -> (z, *state_T)``
    with ``opts = dict(kind, causal, mini_batch_size, eps, checkpoint_group)``; states ``[B, H, ...]``."""

    @staticmethod
    def forward(ctx, q, k, r, eta, ln_w, ln_b, opts, *state):
        kind, causal, N, eps, G = (opts[n] for n in ("kind", "causal", "mini_batch_size", "eps", "checkpoint_group"))
        B, H, T, K = q.shape
        F = state[0].shape[-1]
        BH = B * H
        dev = q.device
        n_mb = triton.cdiv(T, N)
        save = any(ctx.needs_input_grad)  # False under no_grad or when nothing requires grad
        # Without gradients there are no checkpoints to write: one group spans the sequence.
        G = G if save else n_mb
        n_grp = triton.cdiv(n_mb, G)
        q, k, r, eta = (t.contiguous() for t in (q, k, r, eta))
        ln_w_c, ln_b_c = ln_w.contiguous(), ln_b.contiguous()
        st = [s.to(torch.float32).contiguous().view(BH, *s.shape[2:]) for s in state]
        st[1] = st[1].view(BH, F)
        if kind == "mlp":
            st[3] = st[3].view(BH, K)
        z = torch.empty_like(q)
        final = [torch.empty_like(s) for s in st]  # the MLP kernel's working state, then the boundary state
        if save:
            ck = _state_buffers(kind, BH, n_grp, K, F, dev)
        else:
            ck = [torch.empty(1, device=dev, dtype=torch.float32)] * _num_state(kind)
        meta = dict(K=K, F=F, BN=_block_n(N), CAUSAL=causal, SAVE=save, PREC=dot_precision(dev))
        if kind == "mlp":
            meta.update(_mlp_block_f(F))
        kernel = _ttt_linear_fwd_kernel if kind == "linear" else _ttt_mlp_fwd_kernel
        try:
            kernel[(BH,)](q, k, r, eta, ln_w_c, ln_b_c, *st, z, *final, *ck, T, N, n_mb, n_grp, G, H, float(eps),
                          **meta)
        except OutOfResources as e:
            _fallback("forward", (kind, K, F, N, causal), e)
            f = lambda t: t.to(torch.float32)  # noqa: E731
            st0 = [s.to(torch.float32).expand(B, H, *s.shape[2:]) for s in state]
            z32, fin, cks = ttt_scan_manual_fwd(f(q), f(k), f(r), f(eta), f(ln_w_c), f(ln_b_c), st0, kind=kind,
                                                causal=causal, mini_batch_size=N, eps=eps, checkpoint_group=G)
            z.copy_(z32)
            for dst, src in zip(final, fin):
                dst.copy_(src.reshape(dst.shape))
            if save:
                for i, buf in enumerate(ck):
                    buf.copy_(torch.stack([c[i].reshape(BH, *buf.shape[2:]) for c in cks], dim=1))
        if save:
            ctx.save_for_backward(q, k, r, eta, ln_w_c, ln_b_c, *ck)
            ctx.meta = (kind, causal, N, float(eps), G, n_mb, n_grp, B, H, T, K, F)
            ctx.dtypes = (q.dtype, k.dtype, r.dtype, eta.dtype, ln_w.dtype, ln_b.dtype, *(s.dtype for s in state))
        shapes = [s.shape for s in state]
        return (z, *(f.view(shp) for f, shp in zip(final, shapes)))

    @staticmethod
    def backward(ctx, dz, *dfinal):
        q, k, r, eta, ln_w, ln_b, *ck = ctx.saved_tensors
        kind, causal, N, eps, G, n_mb, n_grp, B, H, T, K, F = ctx.meta
        BH, dev = B * H, q.device
        dz = torch.zeros_like(q) if dz is None else dz.contiguous()
        shapes = [(K, F), (F,)] if kind == "linear" else [(K, F), (F,), (F, K), (K,)]
        dfin = [
            torch.zeros(BH, *s, device=dev, dtype=torch.float32) if d is None
            else d.to(torch.float32).contiguous().view(BH, *s)
            for d, s in zip(dfinal, shapes)
        ]
        sc = _state_buffers(kind, BH, G, K, F, dev)
        f32 = dict(device=dev, dtype=torch.float32)
        dq, dk, dr = (torch.empty(BH, T, K, **f32) for _ in range(3))
        deta = torch.empty(BH, T, **f32)
        dlnw, dlnb = torch.empty(BH, K, **f32), torch.empty(BH, K, **f32)
        dst = [torch.empty(BH, *s, **f32) for s in shapes]  # the MLP kernel's working gradient, then dstate0
        BN = _block_n(N)
        meta = dict(K=K, F=F, BN=BN, CAUSAL=causal, PREC=dot_precision(dev))
        try:
            if kind == "linear":
                _ttt_linear_bwd_kernel[(BH,)](q, k, r, eta, ln_w, ln_b, dz, *ck, *dfin, *sc, dq, dk, dr, deta, dlnw,
                                              dlnb, *dst, T, N, n_mb, n_grp, G, H, eps, **meta)
            else:
                tmp = torch.empty(BH, BN, F, **f32)
                _ttt_mlp_bwd_kernel[(BH,)](q, k, r, eta, ln_w, ln_b, dz, *ck, *dfin, *sc, tmp, dq, dk, dr, deta, dlnw,
                                           dlnb, *dst, T, N, n_mb, n_grp, G, H, eps, **_mlp_block_f(F), **meta)
        except OutOfResources as e:
            _fallback("backward", (kind, K, F, N, causal), e)
            return TTTScanFunction._backward_torch(ctx, dz, dfin)
        dt = ctx.dtypes
        grads = [dq.view(B, H, T, K), dk.view(B, H, T, K), dr.view(B, H, T, K), deta.view(B, H, T),
                 dlnw.view(B, H, K).sum(0), dlnb.view(B, H, K).sum(0)]
        grads = [g.to(d) for g, d in zip(grads, dt[:6])]
        st_shapes = [(B, H, K, F), (B, H, 1, F)] + ([] if kind == "linear" else [(B, H, F, K), (B, H, 1, K)])
        dstate = [g.view(s).to(d) for g, s, d in zip(dst, st_shapes, dt[6:])]
        return (*grads, None, *dstate)

    @staticmethod
    def _backward_torch(ctx, dz, dfin):
        """The backward on the PyTorch twin (same checkpoints, same hand-derived formulas), for shapes whose backward
        kernel does not fit the GPU."""
        q, k, r, eta, ln_w, ln_b, *ck = ctx.saved_tensors
        kind, causal, N, eps, G, n_mb, n_grp, B, H, T, K, F = ctx.meta
        shapes = [(B, H, K, F), (B, H, 1, F)] + ([] if kind == "linear" else [(B, H, F, K), (B, H, 1, K)])
        ckpts = [tuple(c[:, g].reshape(s) for c, s in zip(ck, shapes)) for g in range(n_grp)]
        f = lambda t: t.to(torch.float32)  # noqa: E731
        dq, dk, dr, deta, dlnw, dlnb, dst = ttt_scan_manual_bwd(
            f(q), f(k), f(r), f(eta), f(ln_w), f(ln_b), ckpts, f(dz), [d.reshape(s) for d, s in zip(dfin, shapes)],
            kind=kind, causal=causal, mini_batch_size=N, eps=eps, checkpoint_group=G)
        dt = ctx.dtypes
        grads = [g.to(d) for g, d in zip((dq, dk, dr, deta, dlnw, dlnb), dt[:6])]
        return (*grads, None, *(g.to(d) for g, d in zip(dst, dt[6:])))


def ttt_scan_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    r: torch.Tensor,
    eta: torch.Tensor,
    ln_w: torch.Tensor,
    ln_b: torch.Tensor,
    state: tuple[torch.Tensor, ...],
    *,
    kind: str,
    causal: bool,
    mini_batch_size: int,
    eps: float = 1e-8,
    checkpoint_group: int = 0,
    dual: bool | None = None,
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """TTT scan on the fused Triton kernels; same signature and return value as :func:`seqmix.ops.ttt.ttt_scan`.

    Args:
        q, k, r: ``[B, H, T, K]`` (fp32, fp16 or bf16; loads are cast to fp32), ``K`` in
            :data:`SUPPORTED_HEAD_DIMS`. Any strides (made contiguous).
        eta: ``[B, H, T]`` inner learning rates. ln_w, ln_b: ``[H, K]``.
        state: ``(W1 [B,H,K,F], b1 [B,H,1,F][, W2 [B,H,F,K], b2 [B,H,1,K]])`` (broadcast views such as
            :func:`seqmix.ops.ttt.init_state`'s are fine); ``F = K`` for TTT-Linear, a power of two <= 512 for MLP.
        checkpoint_group: mini-batches between saved states for the backward; ``<= 0`` picks ~sqrt(#mini-batches).
        dual: accepted for signature parity. The causal form always uses the dual read-out (``dual=False`` raises
            as in ``ttt_scan``); the non-causal form reads out with the updated state, which the dual form equals.
        token_weights: accepted for signature parity; the kernels compute the ``1/(i+1)`` token weighting only,
            so anything else raises (the layer's variant ``"lm"`` never selects this backend).

    Returns:
        ``z [B, H, T, K]`` in ``q``'s dtype and the fp32 state after the last complete mini-batch.
    """
    check_scan_inputs(q, k, r, eta, state, kind, mini_batch_size)
    if token_weights is not None:
        raise ValueError("the TTT Triton kernels compute the 1/(i+1) token weighting only; token_weights need the "
                         "'torch' or 'naive' scan (seqmix.ops.ttt)")
    if causal and dual is False:
        raise ValueError("the causal form needs the dual read-out (dual=True or None): primal read-out is per mini-batch")
    B, H, T, K = q.shape
    F = state[0].shape[-1]
    if T == 0:
        raise ValueError("empty sequence (T=0)")
    reason = check_supported(kind, K, F, mini_batch_size, q.dtype, q.device)
    if reason is not None:
        raise ValueError(f"ttt_scan_triton: {reason}")
    for name, t in (("k", k), ("r", r), ("eta", eta), ("ln_w", ln_w), ("ln_b", ln_b), *(("state", s) for s in state)):
        if t.device != q.device:
            raise ValueError(f"ttt_scan_triton: {name} is on {t.device}, q on {q.device}")
        if not t.is_floating_point() or t.dtype == torch.float64:
            raise ValueError(f"ttt_scan_triton: {name} has dtype {t.dtype}; use float32/float16/bfloat16")
    if ln_w.shape != (H, K) or ln_b.shape != (H, K):
        raise ValueError(f"ln_w, ln_b must be [H, K] = {(H, K)}, got {tuple(ln_w.shape)}, {tuple(ln_b.shape)}")
    want = [(K, F), (1, F)] + ([] if kind == "linear" else [(F, K), (1, K)])
    try:
        state = tuple(s.expand(B, H, *w) for s, w in zip(state, want))
    except RuntimeError:
        raise ValueError(
            f"state shapes {[tuple(s.shape) for s in state]} do not broadcast to {[(B, H, *w) for w in want]}"
        ) from None
    n_mb = triton.cdiv(T, mini_batch_size)
    G = int(checkpoint_group) if checkpoint_group and checkpoint_group > 0 else default_checkpoint_group(n_mb)
    G = min(G, n_mb)
    opts = dict(kind=kind, causal=bool(causal), mini_batch_size=mini_batch_size, eps=float(eps), checkpoint_group=G)
    z, *final = TTTScanFunction.apply(q, k, r, eta, ln_w, ln_b, opts, *state)
    return z, tuple(final)
