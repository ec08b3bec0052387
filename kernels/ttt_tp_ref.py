"""Plain-PyTorch emulation of the tensor-parallel TTT-MLP kernel (:mod:`seqmix.kernels.ttt_tp`): the same
sharded schedule, step for step, with the cluster all-reduces written out as sums over shards.

Per (batch, head), a thread-block cluster of ``P`` CTAs splits the inner MLP's hidden units ``F`` into ``P``
shards of ``Fp = F / P``; CTA ``p`` keeps ``W1[:, p]`` ``[K, Fp]``, ``b1[p]`` ``[1, Fp]`` and ``W2[p, :]``
``[Fp, K]`` for the whole sequence, plus a replicated ``b2 [1, K]``. Everything ``K`` wide (``Z2``, the LN-L2
gradient ``G2``, the read-out, the LN statistics) is replicated: each CTA computes it from the all-reduced
partial products. Here a "shard" is a list entry, an all-reduce is ``sum(list)`` (:func:`_allreduce`), and a
value computed by every CTA is computed once.

Forward of one mini-batch (``X`` keys, ``Q`` queries, ``R`` targets ``[n, K]``; ``lw = eta / n``)::

    Z1_p = X W1_p + b1_p;  A_p = gelu(Z1_p)
    Z2   = allreduce_p(A_p W2_p) + b2                 <- all-reduce 1 ([N, K])
    G2   = lnl2(Z2, R)                                (replicated)
    G1_p = (G2 W2_p^T) * gelu'(Z1_p)                  (local)
    W1_p' = W1_p - X^T (lw G1_p);  b1_p' = b1_p - 1^T (lw G1_p);  W2_p' = W2_p - A_p^T (lw G2);  b2' (replicated)
    non-causal: Zq = allreduce_p(gelu(Q W1_p' + b1_p') W2_p') + b2'            <- all-reduce 2
    causal:     Z1q_p = Q W1_p + b1_p - (E * (Q X^T + 1)) G1_p;  Aq_p = gelu(Z1q_p)
                S2 = allreduce_p(Aq_p A_p^T)                                    <- all-reduce 2 ([N, N])
                Zq = allreduce_p(Aq_p W2_p) + b2 - (E * (S2 + 1)) G2            <- all-reduce 3

Backward: per checkpoint group in reverse, recompute the group's states from its checkpoint (one forward step
per mini-batch, all-reduce 1 only, no read-out), then step back through the group's mini-batches recomputing
each forward and applying the hand-derived backward of :mod:`seqmix.kernels.ttt_ref` split over the shards.
Its all-reduces (see :func:`_mb_bwd`): ``dq`` partial, ``dk`` partial, ``[dlwG2 | dG2]`` partial and the row sums
``dlw`` (plus ``dM1`` in the causal form); ``dr``, ``deta``, ``dln_w``, ``dln_b`` and ``db2`` are replicated.

Arithmetic in the inputs' dtype (fp64 in the tests, where it equals :func:`seqmix.ops.ttt.ttt_scan` to ~1e-12;
the kernel accumulates in fp32). TTT-MLP only (TTT-Linear's K x K state fits one CTA).
"""

from __future__ import annotations

import torch

from seqmix.ops.ttt import check_scan_inputs, step_weights, gelu_tanh, gelu_tanh_grad

from .ttt_ref import default_checkpoint_group, gelu_d2, lnl2_bwd, lnl2_fwd

__all__ = ["ttt_scan_tp_emulated", "tp_scan_fwd", "tp_scan_bwd", "shard", "unshard"]

Shards = list[torch.Tensor]


def _allreduce(parts: Shards) -> torch.Tensor:
    """A cluster all-reduce over DSMEM: every CTA reads the peers' partials and sums them in rank order."""
    out = parts[0]
    for p in parts[1:]:
        out = out + p
    return out


def shard(state: tuple[torch.Tensor, ...], P: int) -> tuple[Shards, Shards, Shards, torch.Tensor]:
    """``(W1 [.., K, F], b1 [.., 1, F], W2 [.., F, K], b2)`` -> per-CTA lists of ``W1_p, b1_p, W2_p`` and b2."""
    W1, b1, W2, b2 = state
    F = W1.shape[-1]
    if F % P:
        raise ValueError(f"inner width F={F} is not divisible by the cluster size P={P}")
    Fp = F // P
    sl = [slice(p * Fp, (p + 1) * Fp) for p in range(P)]
    return [W1[..., s] for s in sl], [b1[..., s] for s in sl], [W2[..., s, :] for s in sl], b2


def unshard(st) -> tuple[torch.Tensor, ...]:
    W1, b1, W2, b2 = st
    return torch.cat(W1, -1), torch.cat(b1, -1), torch.cat(W2, -2), b2


def _mb_fwd(st, q, x, r, eta, lnw, lnb, eps, causal, readout=True):
    """One mini-batch on P shards: (read-out zq or None, updated shards (always applied), intermediates)."""
    W1, b1, W2, b2 = st
    P = len(W1)
    n = x.shape[-2]
    lw = (eta / n).unsqueeze(-1)  # [.., n, 1]
    Z1 = [x @ W1[p] + b1[p] for p in range(P)]
    A = [gelu_tanh(z) for z in Z1]
    Z2 = _allreduce([A[p] @ W2[p] for p in range(P)]) + b2
    G2, cache = lnl2_fwd(Z2, r, lnw, lnb, eps)
    Pm = [G2 @ W2[p].mT for p in range(P)]
    G1 = [Pm[p] * gelu_tanh_grad(Z1[p]) for p in range(P)]
    lwG1, lwG2 = [lw * g for g in G1], lw * G2
    new = (
        [W1[p] - x.mT @ lwG1[p] for p in range(P)],
        [b1[p] - lwG1[p].sum(-2, keepdim=True) for p in range(P)],
        [W2[p] - A[p].mT @ lwG2 for p in range(P)],
        b2 - lwG2.sum(-2, keepdim=True),
    )
    I = dict(Z1=Z1, A=A, G2=G2, Pm=Pm, G1=G1, cache=cache, lwG1=lwG1, lwG2=lwG2, lw=lw)
    if not readout:
        return None, new, I
    if causal:
        E = step_weights(eta, True)[0]
        S1 = q @ x.mT
        Z1q = [q @ W1[p] + b1[p] - (E * (S1 + 1)) @ G1[p] for p in range(P)]
        Aq = [gelu_tanh(z) for z in Z1q]
        S2 = _allreduce([Aq[p] @ A[p].mT for p in range(P)])
        zq = _allreduce([Aq[p] @ W2[p] for p in range(P)]) + b2 - (E * (S2 + 1)) @ G2
        I.update(E=E, S1=S1, S2=S2)
    else:
        Z1q = [q @ new[0][p] + new[1][p] for p in range(P)]
        Aq = [gelu_tanh(z) for z in Z1q]
        zq = _allreduce([Aq[p] @ new[2][p] for p in range(P)]) + new[3]
    I.update(Z1q=Z1q, Aq=Aq)
    return zq, new, I


def _mb_bwd(causal, st, new, I, q, x, eta, lnw, dzq, dnext, upd):
    """Backward of one mini-batch on P shards; the all-reduces are marked. Returns
    ``(dq, dx, dr, deta, dln_w, dln_b, dstate shards)`` (see :mod:`seqmix.kernels.ttt_ref` for the derivation)."""
    W1, b1, W2, b2 = st
    P = len(W1)
    n = x.shape[-2]
    lw = I["lw"]
    Z1, A, G2, Pm, G1, Z1q, Aq = (I[k] for k in ("Z1", "A", "G2", "Pm", "G1", "Z1q", "Aq"))
    lwG1, lwG2 = I["lwG1"], I["lwG2"]
    dW1, db1, dW2, db2 = dnext
    deta_E = None
    if causal:
        E, S1, S2 = I["E"], I["S1"], I["S2"]
        dM2 = -dzq @ G2.mT  # replicated [n, n]
        dS2 = dM2 * E
        dAq = [dzq @ W2[p].mT + dS2 @ A[p] for p in range(P)]
        dA = [dS2.mT @ Aq[p] for p in range(P)]
        deta_E = dM2 * (S2 + 1)
        dG2 = -(E * (S2 + 1)).mT @ dzq
        dz1q = [dAq[p] * gelu_tanh_grad(Z1q[p]) for p in range(P)]
        dM1 = -_allreduce([dz1q[p] @ G1[p].mT for p in range(P)])  # all-reduce (causal only)
        dS1 = dM1 * E
        dq = _allreduce([dz1q[p] @ W1[p].mT for p in range(P)]) + dS1 @ x  # all-reduce: dq
        dx_rep = dS1.mT @ q
        deta_E = deta_E + dM1 * (S1 + 1)
        dG1 = [-(E * (S1 + 1)).mT @ dz1q[p] for p in range(P)]
        # the update's output gets upd * dnext; the identity part of W' and the read-out's W add to dW
        dW1n, db1n, dW2n, db2n = ([d * upd for d in dW1], [d * upd for d in db1], [d * upd for d in dW2], db2 * upd)
        dW1 = [q.mT @ dz1q[p] + dW1[p] for p in range(P)]
        db1 = [dz1q[p].sum(-2, keepdim=True) + db1[p] for p in range(P)]
        dW2 = [Aq[p].mT @ dzq + dW2[p] for p in range(P)]
        db2 = dzq.sum(-2, keepdim=True) + db2
    else:
        W1n, b1n, W2n, b2n = new
        dz1q = [(dzq @ W2n[p].mT) * gelu_tanh_grad(Z1q[p]) for p in range(P)]
        dW2n = [Aq[p].mT @ dzq + upd * dW2[p] for p in range(P)]
        db2n = dzq.sum(-2, keepdim=True) + upd * db2
        dq = _allreduce([dz1q[p] @ W1n[p].mT for p in range(P)])  # all-reduce: dq
        dW1n = [q.mT @ dz1q[p] + upd * dW1[p] for p in range(P)]
        db1n = [dz1q[p].sum(-2, keepdim=True) + upd * db1[p] for p in range(P)]
        # W = W' + (what the identity part passes) + the ragged tail's pass-through (1 - upd) dnext
        dW1 = [dW1n[p] + (1 - upd) * dW1[p] for p in range(P)]
        db1 = [db1n[p] + (1 - upd) * db1[p] for p in range(P)]
        dW2 = [dW2n[p] + (1 - upd) * dW2[p] for p in range(P)]
        db2 = db2n + (1 - upd) * db2
        dA = [torch.zeros_like(a) for a in A]
        dG1 = [torch.zeros_like(g) for g in G1]
        dG2 = torch.zeros_like(G2)
        dx_rep = torch.zeros_like(x)
    # update path: W1_p' = W1_p - X^T (lw G1_p), W2_p' = W2_p - A_p^T (lw G2) (and the biases)
    dlwG1 = [-(x @ dW1n[p]) - db1n[p] for p in range(P)]  # local [n, Fp]
    dxp = [-(lwG1[p] @ dW1n[p].mT) for p in range(P)]  # partial of dk, reduced with the rest below
    dlwG2 = _allreduce([-(A[p] @ dW2n[p]) for p in range(P)]) - db2n  # all-reduce [n, K]
    dA = [dA[p] - lwG2 @ dW2n[p].mT for p in range(P)]
    dlw = _allreduce([(dlwG1[p] * G1[p]).sum(-1) for p in range(P)]) + (dlwG2 * G2).sum(-1)  # all-reduce [n]
    dG1 = [dG1[p] + lw * dlwG1[p] for p in range(P)]
    # G1_p = Pm_p * gelu'(Z1_p), Pm_p = G2 W2_p^T
    dP = [dG1[p] * gelu_tanh_grad(Z1[p]) for p in range(P)]
    dZ1 = [dG1[p] * Pm[p] * gelu_d2(Z1[p]) for p in range(P)]
    dG2 = dG2 + lw * dlwG2 + _allreduce([dP[p] @ W2[p] for p in range(P)])  # all-reduce [n, K]
    dW2 = [dW2[p] + dP[p].mT @ G2 for p in range(P)]
    dZ2, dr, dlnw, dlnb = lnl2_bwd(dG2, G2, I["cache"], lnw)  # replicated
    dA = [dA[p] + dZ2 @ W2[p].mT for p in range(P)]
    dW2 = [dW2[p] + A[p].mT @ dZ2 for p in range(P)]
    db2 = db2 + dZ2.sum(-2, keepdim=True)
    dZ1 = [dZ1[p] + dA[p] * gelu_tanh_grad(Z1[p]) for p in range(P)]
    dx = dx_rep + _allreduce([dxp[p] + dZ1[p] @ W1[p].mT for p in range(P)])  # all-reduce: dk
    dW1 = [dW1[p] + x.mT @ dZ1[p] for p in range(P)]
    db1 = [db1[p] + dZ1[p].sum(-2, keepdim=True) for p in range(P)]
    deta = dlw / n
    if causal:
        pos = 1.0 / torch.arange(1, n + 1, device=eta.device, dtype=eta.dtype)
        deta = deta + (torch.tril(deta_E) * pos[:, None]).sum(-2)
    return dq, dx, dr, deta, dlnw, dlnb, (dW1, db1, dW2, db2)


def _affine(w: torch.Tensor) -> torch.Tensor:
    return w.view(1, w.shape[0], 1, w.shape[1])


def tp_scan_fwd(q, k, r, eta, ln_w, ln_b, state, *, P, causal, mini_batch_size, eps, checkpoint_group):
    """Forward on P shards with checkpoints: ``(z, final shards, checkpoints)``; ``checkpoints[g]`` holds the
    shards before mini-batch ``g * G`` (what each CTA writes to its slice of the checkpoint buffer)."""
    T, N, G = q.shape[2], mini_batch_size, checkpoint_group
    lnw, lnb = _affine(ln_w), _affine(ln_b)
    st = shard(state, P)
    zs, ckpts = [], []
    for m, t0 in enumerate(range(0, T, N)):
        if m % G == 0:
            ckpts.append(st)
        s = slice(t0, min(t0 + N, T))
        zq, new, _ = _mb_fwd(st, q[:, :, s], k[:, :, s], r[:, :, s], eta[:, :, s], lnw, lnb, eps, causal)
        zs.append(zq)
        if s.stop - s.start == N:
            st = new
    return torch.cat(zs, dim=2), st, ckpts


def tp_scan_bwd(q, k, r, eta, ln_w, ln_b, ckpts, dz, dfinal, *, causal, mini_batch_size, eps, checkpoint_group):
    """Reverse walk over checkpoint groups, as the backward kernel: recompute the group's states (written to a
    per-CTA scratch of G shards), then step back through its mini-batches. ``dfinal`` is sharded like a state.
    Returns ``(dq, dk, dr, deta, dln_w, dln_b, dstate0 shards)``."""
    T, N, G = q.shape[2], mini_batch_size, checkpoint_group
    lnw, lnb = _affine(ln_w), _affine(ln_b)
    n_mb = -(-T // N)
    dq, dk, dr, deta = (torch.zeros_like(t) for t in (q, k, r, eta))
    dlnw, dlnb = torch.zeros_like(ln_w), torch.zeros_like(ln_b)
    dst = dfinal
    sl = lambda m: slice(m * N, min(m * N + N, T))  # noqa: E731
    for g in reversed(range(len(ckpts))):
        m0, m1 = g * G, min(g * G + G, n_mb)
        states = [ckpts[g]]
        for m in range(m0, m1 - 1):  # only full mini-batches precede another one
            s = sl(m)
            _, new, _ = _mb_fwd(states[-1], None, k[:, :, s], r[:, :, s], eta[:, :, s], lnw, lnb, eps, causal,
                                readout=False)
            states.append(new)
        for m in reversed(range(m0, m1)):
            s = sl(m)
            st = states[m - m0]
            args = (q[:, :, s], k[:, :, s], r[:, :, s], eta[:, :, s])
            _, new, I = _mb_fwd(st, *args, lnw, lnb, eps, causal)
            upd = 1.0 if s.stop - s.start == N else 0.0
            gq, gk, gr, ge, gw, gb, dst = _mb_bwd(causal, st, new, I, args[0], args[1], args[3], lnw, dz[:, :, s],
                                                  dst, upd)
            dq[:, :, s], dk[:, :, s], dr[:, :, s], deta[:, :, s] = gq, gk, gr, ge
            dlnw = dlnw + gw.sum(0)
            dlnb = dlnb + gb.sum(0)
    return dq, dk, dr, deta, dlnw, dlnb, dst


class _TPScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, r, eta, ln_w, ln_b, opts, *state):
        z, final, ckpts = tp_scan_fwd(q, k, r, eta, ln_w, ln_b, state, **opts)
        ctx.opts, ctx.P = opts, opts["P"]
        ctx.save_for_backward(q, k, r, eta, ln_w, ln_b, *[t for c in ckpts for t in unshard(c)])
        return (z, *unshard(final))

    @staticmethod
    def backward(ctx, dz, *dfinal):
        q, k, r, eta, ln_w, ln_b, *flat = ctx.saved_tensors
        ckpts = [shard(tuple(flat[i : i + 4]), ctx.P) for i in range(0, len(flat), 4)]
        dfinal = tuple(torch.zeros_like(c) if d is None else d for d, c in zip(dfinal, unshard(ckpts[0])))
        dz = torch.zeros_like(q) if dz is None else dz
        opts = {k: v for k, v in ctx.opts.items() if k != "P"}
        dq, dk, dr, deta, dlnw, dlnb, dst = tp_scan_bwd(q, k, r, eta, ln_w, ln_b, ckpts, dz,
                                                        shard(dfinal, ctx.P), **opts)
        return (dq, dk, dr, deta, dlnw, dlnb, None, *unshard(dst))


def ttt_scan_tp_emulated(q, k, r, eta, ln_w, ln_b, state, *, kind="mlp", causal, mini_batch_size, eps=1e-8,
                         checkpoint_group=0, dual=None, shards: int = 4):
    """Same signature and return value as :func:`seqmix.ops.ttt.ttt_scan` (TTT-MLP only), computed on ``shards``
    hidden-unit shards with the kernel's schedule and hand-written backward. ``checkpoint_group <= 0`` picks
    :func:`seqmix.kernels.ttt_ref.default_checkpoint_group`."""
    check_scan_inputs(q, k, r, eta, state, kind, mini_batch_size)
    if kind != "mlp":
        raise ValueError(f"the tensor-parallel TTT scan is for TTT-MLP only, got kind={kind!r}")
    if causal and dual is False:
        raise ValueError("the causal form needs the dual read-out (dual=True or None)")
    n_mb = -(-q.shape[2] // mini_batch_size)
    G = checkpoint_group if checkpoint_group > 0 else default_checkpoint_group(n_mb)
    opts = dict(P=int(shards), causal=causal, mini_batch_size=mini_batch_size, eps=eps, checkpoint_group=G)
    state = tuple(s.expand(q.shape[0], q.shape[1], *s.shape[2:]) for s in state)
    z, *final = _TPScan.apply(q, k, r, eta, ln_w, ln_b, opts, *state)
    return z, tuple(final)
