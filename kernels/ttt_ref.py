"""Plain-PyTorch twin of the TTT Triton kernels (:mod:`seqmix.kernels.ttt_triton`): the same loop structure
(state checkpoints every ``G`` mini-batches in the forward; a backward that walks mini-batches in reverse,
recomputing each checkpoint group's states) and the same hand-derived backward, batched over ``[B, H]``.

It exists to prove the derivation (tests compare it with autograd through :func:`seqmix.ops.ttt.ttt_scan` in
fp64) and as a readable statement of what every kernel program computes. The forward helpers (GELU, the LN-L2
gradient, the read-out step sizes) are those of :mod:`seqmix.ops.ttt`; only the hand-written backward and the
checkpoint schedule are its own. No Triton is imported here.

Legend: B batch, H heads, T tokens, K head dim, F inner width (K for TTT-Linear, e.g. 4K for TTT-MLP), N tokens
per mini-batch, n tokens actually present in a mini-batch (``n < N`` only for the ragged last one), G mini-batches
per checkpoint group. Row vectors: ``b1 [.., 1, F]``; ``lw = eta / n`` is the state-update step of each token.

Forward of one mini-batch (rows are tokens; ``X`` keys, ``Q`` queries, ``R`` targets; ``E`` the read-out step
matrix, causal only: ``E[i, j] = eta_j / (i + 1)`` for ``j <= i``; ``S = Q X^T``; ``M = E * (S + 1)``):

    TTT-Linear                                    TTT-MLP
    Z  = X W1 + b1                                Z1 = X W1 + b1;  A = gelu(Z1);  Z2 = A W2 + b2
    G  = lnl2(Z, R)                               G2 = lnl2(Z2, R); P = G2 W2^T;  G1 = P * gelu'(Z1)
    W1' = W1 - X^T (lw G1), b1' = b1 - 1^T (lw G1)   (and W2' = W2 - A^T (lw G2), b2' = b2 - 1^T (lw G2))
    causal:      Zq = Q W1 + b1 - M G             Z1q = Q W1 + b1 - M1 G1; Aq = gelu(Z1q);
                                                  Zq = Aq W2 + b2 - M2 G2,   M2 = E * (Aq A^T + 1)
    non-causal:  Zq = Q W1' + b1'                 Zq = gelu(Q W1' + b1') W2' + b2'

(the non-causal dual form of :func:`seqmix.ops.ttt.ttt_scan` equals this primal read-out exactly, since there
``E[i, j] = lw_j`` for all ``i``). The state after a full mini-batch is the primed one; a ragged last mini-batch
is read out with its own update (mean over its n tokens) but leaves the returned state unchanged.

Backward of one mini-batch, given dZq and the gradient dS' of the state after it (reverse-mode, by hand; the
kernels follow these lines one for one):

    upd = (n == N); the update path receives dW' = upd * dS', the untouched state passes (1 - upd) * dS' on.
    causal read-out:   dQ = dZq W1^T + (dM * E) X      with dM = -dZq G^T
                       dX = (dM * E)^T Q,  dE = dM * (S + 1),  dG = -M^T dZq,  dW1 = Q^T dZq,  db1 = 1^T dZq
                       (MLP: first through Zq: dW2 = Aq^T dZq, dG2 = -M2^T dZq, dAq = dZq W2^T + (dM2 * E) A,
                        dA = (dM2 * E)^T Aq, dE = dM2 * (S2 + 1); then dZ1q = dAq * gelu'(Z1q) and the lines
                        above with Zq -> Z1q, G -> G1)
    non-causal read-out: dW' += Q^T dZq (linear)  /  dW2' += Aq^T dZq, dZ1q = (dZq W2'^T) * gelu'(Z1q),
                       dW1' += Q^T dZ1q (MLP); dQ = dZ(1)q W1'^T; the read-out state is also the update's output,
                       and the identity part of W' = W - ... gives dW += dW'.
    update path:       d(lw G) = -X dW1' - 1 db1'  ->  dX -= (lw G) dW1'^T,  dG += lw * d(lw G),
                       dlw += rowsum(d(lw G) * G)         (MLP: the same for (A, G2, W2', b2'))
    MLP inner backward: dP = dG1 * gelu'(Z1), dZ1 = dG1 * P * gelu''(Z1), dG2 += dP W2, dW2 += dP^T G2
    LN-L2 gradient:    (dZ, dR, dln_w, dln_b) = lnl2_bwd(dG)   (see :func:`lnl2_bwd`)
    inner forward:     dX += dZ W^T, dW += X^T dZ, db += 1^T dZ (MLP: dA += dZ2 W2^T, dZ1 += dA * gelu'(Z1),
                       then the same for Z1 = X W1 + b1)
    rates:             deta_j = dlw_j / n + sum_i dE[i, j] / (i + 1)   (the last term causal only)
"""

from __future__ import annotations

import math

import torch

from seqmix.ops.ttt import gelu_tanh as gelu
from seqmix.ops.ttt import gelu_tanh_grad as gelu_d1
from seqmix.ops.ttt import ln_l2_fwd as lnl2_fwd
from seqmix.ops.ttt import step_weights

__all__ = [
    "gelu_d2",
    "lnl2_bwd",
    "ttt_scan_manual",
    "ttt_scan_manual_fwd",
    "ttt_scan_manual_bwd",
    "default_checkpoint_group",
]

_C = math.sqrt(2.0 / math.pi)
_A = 0.044715


def gelu_d2(x: torch.Tensor) -> torch.Tensor:
    """GELU_tanh''(x) = (1 - t^2) (u' - x t u'^2 + 3 a c x^2)  (u'' = 6 a c x), t = tanh(u), u = c (x + a x^3)."""
    t = torch.tanh(_C * (x + _A * x * x * x))
    du = _C * (1.0 + 3.0 * _A * x * x)
    return (1.0 - t * t) * (du - x * t * du * du + 3.0 * _A * _C * x * x)


def lnl2_bwd(dg: torch.Tensor, g: torch.Tensor, cache, w: torch.Tensor):
    """Backward of :func:`lnl2_fwd`: ``dg -> (dz, dr, dw, db)`` (``dw, db`` summed over rows only).

    Derivation (per row; means over the K features):
      g = rstd (gx - mean(gx) - xh c),  c = mean(gx xh).  With u = rstd dg:
      * through gx:      dgx = u - mean(u) - xh mean(u xh)           (the same projection, it is symmetric)
      * through xh (direct, via c):  dxh = -u c - gx mean(u xh)
      * gx = (xh w + b - r) w:  dxh += dgx w^2,  dw = dgx (e + w xh),  db = dgx w,  dr = -dgx w
      * through rstd (g is linear in rstd): drstd = sum(dg g) / rstd
      * xh = zc rstd, rstd = (mean(zc^2) + eps)^-1/2, zc = z - mean(z) gives the LayerNorm input gradient
            dz = rstd (dxh - mean(dxh) - xh (mean(dxh xh) + mean(dg g)))
    """
    xh, rstd, gx, e = cache
    u = rstd * dg
    m_uxh = (u * xh).mean(-1, keepdim=True)
    dgx = u - u.mean(-1, keepdim=True) - xh * m_uxh
    c = (gx * xh).mean(-1, keepdim=True)
    dxh = -u * c - gx * m_uxh + dgx * w * w
    dw = (dgx * (e + w * xh)).sum(-2)
    db = (dgx * w).sum(-2)
    dr = -dgx * w
    m2 = (dxh * xh).mean(-1, keepdim=True) + (dg * g).mean(-1, keepdim=True)
    dz = rstd * (dxh - dxh.mean(-1, keepdim=True) - xh * m2)
    return dz, dr, dw, db


def default_checkpoint_group(n_mb: int) -> int:
    """Mini-batches per checkpoint group when none is given: ~sqrt(#mini-batches), which minimises the saved
    checkpoints (n_mb / G states) plus the backward's per-group scratch (G states). Recompute cost does not
    depend on G (the backward recomputes every mini-batch's forward once)."""
    return max(1, math.ceil(math.sqrt(max(n_mb, 1))))


def _mb_fwd(kind, causal, st, q, x, r, eta, lw_, lb_, eps):
    """One mini-batch: returns (read-out z, state after the update (always applied), intermediates)."""
    n = x.shape[-2]
    lw = (eta / n).unsqueeze(-1)
    if kind == "linear":
        W1, b1 = st
        Z = x @ W1 + b1
        G, cache = lnl2_fwd(Z, r, lw_, lb_, eps)
        lwG = lw * G
        W1n, b1n = W1 - x.mT @ lwG, b1 - lwG.sum(-2, keepdim=True)
        if causal:
            E = step_weights(eta, True)[0]
            S = q @ x.mT
            zq = q @ W1 + b1 - (E * (S + 1)) @ G
        else:
            E = S = None
            zq = q @ W1n + b1n
        return zq, (W1n, b1n), dict(G=G, cache=cache, lwG=lwG, E=E, S=S, lw=lw)
    W1, b1, W2, b2 = st
    Z1 = x @ W1 + b1
    A = gelu(Z1)
    Z2 = A @ W2 + b2
    G2, cache = lnl2_fwd(Z2, r, lw_, lb_, eps)
    P = G2 @ W2.mT
    G1 = P * gelu_d1(Z1)
    lwG1, lwG2 = lw * G1, lw * G2
    new = (W1 - x.mT @ lwG1, b1 - lwG1.sum(-2, keepdim=True), W2 - A.mT @ lwG2, b2 - lwG2.sum(-2, keepdim=True))
    if causal:
        E = step_weights(eta, True)[0]
        S1 = q @ x.mT
        Z1q = q @ W1 + b1 - (E * (S1 + 1)) @ G1
        Aq = gelu(Z1q)
        S2 = Aq @ A.mT
        zq = Aq @ W2 + b2 - (E * (S2 + 1)) @ G2
    else:
        E = S1 = S2 = None
        Z1q = q @ new[0] + new[1]
        Aq = gelu(Z1q)
        zq = Aq @ new[2] + new[3]
    return zq, new, dict(Z1=Z1, A=A, G2=G2, P=P, G1=G1, cache=cache, lwG1=lwG1, lwG2=lwG2, E=E, S1=S1, S2=S2,
                         Z1q=Z1q, Aq=Aq, lw=lw)


def _mb_bwd(kind, causal, st, new, I, q, x, eta, lw_, dzq, dnext, upd):
    """Backward of one mini-batch (see the module docstring). Returns (dq, dx, dr, deta, dln_w, dln_b, dstate)."""
    n = x.shape[-2]
    lw = I["lw"]
    d_upd = tuple(d * upd for d in dnext)  # gradient reaching the update's output
    d_pass = tuple(d * (1 - upd) for d in dnext)  # ragged tail: the returned state skipped its update
    deta_E = None
    if kind == "linear":
        W1, b1 = st
        G, lwG = I["G"], I["lwG"]
        if causal:
            E, S = I["E"], I["S"]
            dM = -dzq @ G.mT
            dS = dM * E
            dq = dzq @ W1.mT + dS @ x
            dx = dS.mT @ q
            deta_E = dM * (S + 1)
            dG = -(E * (S + 1)).mT @ dzq
            dW1 = q.mT @ dzq + dnext[0]  # identity part of W1' (full) or pass-through (tail)
            db1 = dzq.sum(-2, keepdim=True) + dnext[1]
            dW1n, db1n = d_upd
        else:
            dq = dzq @ new[0].mT
            dW1n = q.mT @ dzq + d_upd[0]
            db1n = dzq.sum(-2, keepdim=True) + d_upd[1]
            dW1, db1 = dW1n + d_pass[0], db1n + d_pass[1]
            dx = torch.zeros_like(x)
            dG = torch.zeros_like(G)
        dlwG = -(x @ dW1n) - db1n
        dx = dx - lwG @ dW1n.mT
        dG = dG + lw * dlwG
        dlw = (dlwG * G).sum(-1)
        dZ, dr, dlnw, dlnb = lnl2_bwd(dG, G, I["cache"], lw_)
        dx = dx + dZ @ W1.mT
        dW1 = dW1 + x.mT @ dZ
        db1 = db1 + dZ.sum(-2, keepdim=True)
        dstate = (dW1, db1)
    else:
        W1, b1, W2, b2 = st
        Z1, A, G2, P, G1, Z1q, Aq = (I[k] for k in ("Z1", "A", "G2", "P", "G1", "Z1q", "Aq"))
        lwG1, lwG2 = I["lwG1"], I["lwG2"]
        if causal:
            E, S1, S2 = I["E"], I["S1"], I["S2"]
            # Zq = Aq W2 + b2 - (E * (S2 + 1)) G2
            dM2 = -dzq @ G2.mT
            dS2 = dM2 * E
            dAq = dzq @ W2.mT + dS2 @ A
            dA = dS2.mT @ Aq
            deta_E = dM2 * (S2 + 1)
            dG2 = -(E * (S2 + 1)).mT @ dzq
            dW2 = Aq.mT @ dzq + dnext[2]
            db2 = dzq.sum(-2, keepdim=True) + dnext[3]
            # Z1q = Q W1 + b1 - (E * (S1 + 1)) G1
            dz1q = dAq * gelu_d1(Z1q)
            dM1 = -dz1q @ G1.mT
            dS1 = dM1 * E
            dq = dz1q @ W1.mT + dS1 @ x
            dx = dS1.mT @ q
            deta_E = deta_E + dM1 * (S1 + 1)
            dG1 = -(E * (S1 + 1)).mT @ dz1q
            dW1 = q.mT @ dz1q + dnext[0]
            db1 = dz1q.sum(-2, keepdim=True) + dnext[1]
            dW1n, db1n, dW2n, db2n = d_upd
        else:
            W1n, b1n, W2n, b2n = new
            dW2n = Aq.mT @ dzq + d_upd[2]
            db2n = dzq.sum(-2, keepdim=True) + d_upd[3]
            dz1q = (dzq @ W2n.mT) * gelu_d1(Z1q)
            dW1n = q.mT @ dz1q + d_upd[0]
            db1n = dz1q.sum(-2, keepdim=True) + d_upd[1]
            dq = dz1q @ W1n.mT
            dW1, db1, dW2, db2 = dW1n + d_pass[0], db1n + d_pass[1], dW2n + d_pass[2], db2n + d_pass[3]
            dx = torch.zeros_like(x)
            dA = torch.zeros_like(A)
            dG1 = torch.zeros_like(G1)
            dG2 = torch.zeros_like(G2)
        # update path: W1' = W1 - X^T (lw G1), W2' = W2 - A^T (lw G2) (and the biases)
        dlwG1 = -(x @ dW1n) - db1n
        dlwG2 = -(A @ dW2n) - db2n
        dx = dx - lwG1 @ dW1n.mT
        dA = dA - lwG2 @ dW2n.mT
        dG1 = dG1 + lw * dlwG1
        dG2 = dG2 + lw * dlwG2
        dlw = (dlwG1 * G1).sum(-1) + (dlwG2 * G2).sum(-1)
        # G1 = P * gelu'(Z1), P = G2 W2^T
        dP = dG1 * gelu_d1(Z1)
        dZ1 = dG1 * P * gelu_d2(Z1)
        dG2 = dG2 + dP @ W2
        dW2 = dW2 + dP.mT @ G2
        # G2 = lnl2(Z2, R)
        dZ2, dr, dlnw, dlnb = lnl2_bwd(dG2, G2, I["cache"], lw_)
        # Z2 = A W2 + b2, A = gelu(Z1), Z1 = X W1 + b1
        dA = dA + dZ2 @ W2.mT
        dW2 = dW2 + A.mT @ dZ2
        db2 = db2 + dZ2.sum(-2, keepdim=True)
        dZ1 = dZ1 + dA * gelu_d1(Z1)
        dx = dx + dZ1 @ W1.mT
        dW1 = dW1 + x.mT @ dZ1
        db1 = db1 + dZ1.sum(-2, keepdim=True)
        dstate = (dW1, db1, dW2, db2)
    deta = dlw / n
    if causal:
        pos = 1.0 / torch.arange(1, n + 1, device=eta.device, dtype=eta.dtype)
        deta = deta + (torch.tril(deta_E) * pos[:, None]).sum(-2)
    return dq, dx, dr, deta, dlnw, dlnb, dstate


def _affine(w: torch.Tensor) -> torch.Tensor:
    return w.view(1, w.shape[0], 1, w.shape[1])


def ttt_scan_manual_fwd(q, k, r, eta, ln_w, ln_b, state, *, kind, causal, mini_batch_size, eps, checkpoint_group):
    """Forward with checkpoints: returns ``(z, boundary state, checkpoints)``; ``checkpoints[g]`` is the state
    before mini-batch ``g * G`` (G = ``checkpoint_group``; the ragged tail, if any, is the last mini-batch)."""
    T, N, G = q.shape[2], mini_batch_size, checkpoint_group
    lw_, lb_ = _affine(ln_w), _affine(ln_b)
    st = tuple(state)
    zs, ckpts = [], []
    for m, t0 in enumerate(range(0, T, N)):
        if m % G == 0:
            ckpts.append(st)
        s = slice(t0, min(t0 + N, T))
        zq, new, _ = _mb_fwd(kind, causal, st, q[:, :, s], k[:, :, s], r[:, :, s], eta[:, :, s], lw_, lb_, eps)
        zs.append(zq)
        if s.stop - s.start == N:
            st = new
    return torch.cat(zs, dim=2), st, ckpts


def ttt_scan_manual_bwd(q, k, r, eta, ln_w, ln_b, ckpts, dz, dfinal, *, kind, causal, mini_batch_size, eps,
                        checkpoint_group):
    """Reverse walk over checkpoint groups: recompute the group's states from its checkpoint (the kernel keeps
    them in a per-program scratch buffer), then step back through its mini-batches.

    Returns ``(dq, dk, dr, deta, dln_w, dln_b, dstate0)``.
    """
    T, N, G = q.shape[2], mini_batch_size, checkpoint_group
    lw_, lb_ = _affine(ln_w), _affine(ln_b)
    n_mb = -(-T // N)
    dq, dk, dr, deta = (torch.zeros_like(t) for t in (q, k, r, eta))
    dlnw = torch.zeros_like(ln_w)
    dlnb = torch.zeros_like(ln_b)
    dst = tuple(dfinal)
    sl = lambda m: slice(m * N, min(m * N + N, T))  # noqa: E731
    for g in reversed(range(len(ckpts))):
        m0, m1 = g * G, min(g * G + G, n_mb)
        states = [ckpts[g]]
        for m in range(m0, m1 - 1):  # states before each mini-batch of the group (only full ones step)
            s = sl(m)
            args = (q[:, :, s], k[:, :, s], r[:, :, s], eta[:, :, s])
            _, new, _ = _mb_fwd(kind, causal, states[-1], *args, lw_, lb_, eps)
            states.append(new)
        for m in reversed(range(m0, m1)):
            s = sl(m)
            st = states[m - m0]
            args = (q[:, :, s], k[:, :, s], r[:, :, s], eta[:, :, s])
            _, new, I = _mb_fwd(kind, causal, st, *args, lw_, lb_, eps)
            upd = 1.0 if s.stop - s.start == N else 0.0
            gq, gk, gr, ge, gw, gb, dst = _mb_bwd(kind, causal, st, new, I, args[0], args[1], args[3], lw_,
                                                   dz[:, :, s], dst, upd)
            dq[:, :, s], dk[:, :, s], dr[:, :, s], deta[:, :, s] = gq, gk, gr, ge
            dlnw = dlnw + gw.sum(0)
            dlnb = dlnb + gb.sum(0)
    return dq, dk, dr, deta, dlnw, dlnb, dst


class _ManualScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, r, eta, ln_w, ln_b, opts, *state):
        z, final, ckpts = ttt_scan_manual_fwd(q, k, r, eta, ln_w, ln_b, state, **opts)
        ctx.opts, ctx.n_state = opts, len(state)
        ctx.save_for_backward(q, k, r, eta, ln_w, ln_b, *[t for c in ckpts for t in c])
        return (z, *final)

    @staticmethod
    def backward(ctx, dz, *dfinal):
        q, k, r, eta, ln_w, ln_b, *flat = ctx.saved_tensors
        ns = ctx.n_state
        ckpts = [tuple(flat[i : i + ns]) for i in range(0, len(flat), ns)]
        dfinal = tuple(torch.zeros_like(c) if d is None else d for d, c in zip(dfinal, ckpts[0]))
        dz = torch.zeros_like(q) if dz is None else dz
        dq, dk, dr, deta, dlnw, dlnb, dst = ttt_scan_manual_bwd(q, k, r, eta, ln_w, ln_b, ckpts, dz, dfinal, **ctx.opts)
        return (dq, dk, dr, deta, dlnw, dlnb, None, *dst)


def ttt_scan_manual(q, k, r, eta, ln_w, ln_b, state, *, kind, causal, mini_batch_size, eps=1e-8,
                    checkpoint_group=0, dual=None):
    """Same signature and return value as :func:`seqmix.ops.ttt.ttt_scan`, computed like the Triton kernels
    (explicit hand-written backward). ``checkpoint_group <= 0`` picks :func:`default_checkpoint_group`."""
    if causal and dual is False:
        raise ValueError("the causal form needs the dual read-out (dual=True or None)")
    n_mb = -(-q.shape[2] // mini_batch_size)
    G = checkpoint_group if checkpoint_group > 0 else default_checkpoint_group(n_mb)
    opts = dict(kind=kind, causal=causal, mini_batch_size=mini_batch_size, eps=eps, checkpoint_group=G)
    state = tuple(s.expand(q.shape[0], q.shape[1], *s.shape[2:]) for s in state)
    z, *final = _ManualScan.apply(q, k, r, eta, ln_w, ln_b, opts, *state)
    return z, tuple(final)
