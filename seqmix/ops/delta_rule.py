"""Gated delta rule (Yang, Kautz & Hatamizadeh 2024, "Gated Delta Networks: Improving Mamba2 with Delta Rule",
arXiv 2412.06464): a chunked PyTorch form and its naive per-token twin, with one signature shared with fla's
``fla.ops.gated_delta_rule.{chunk,fused_recurrent}`` (layout ``[B, T, H, K]``).

Per value head, with a state ``S_t: [K, V]``, decay ``alpha_t = exp(g_t)`` (``g_t <= 0``) and write strength
``beta_t`` in ``(0, 1)`` (``(0, 2)`` with negative eigenvalues)::

    S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T
    o_t = S_t^T (scale * q_t)

Legend: B batch, T tokens, H query/key heads, HV value heads (``HV % H == 0``; ``HV > H`` is grouped value
attention: value head ``i`` reads query/key head ``i // (HV // H)``), K key head dim, V value head dim,
N chunks, C tokens per chunk.

Both functions take ``q, k: [B, T, H, K]``, ``v: [B, T, HV, V]``, ``g, beta: [B, T, HV]`` (``g`` is the log decay),
``scale`` (default ``K ** -0.5``), ``initial_state: [B, HV, K, V]`` and ``output_final_state``, and return
``(o: [B, T, HV, V], final_state: [B, HV, K, V] or None)``. All arithmetic runs in fp32, or fp64 for fp64 inputs
(so the forms can be compared to ~1e-12); ``o`` comes back in ``q``'s dtype and the state in the accumulation
dtype. q and k are used as given: the layer L2-normalises them, as the paper does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["chunk_gated_delta_rule", "naive_recurrent_gated_delta_rule"]
from . import acc_dtype
from .scan import chunk_scan, exporting, num_chunks




def _check_inputs(q, k, v, g, beta, initial_state) -> tuple[int, int, int, int, int, int]:
    """Validate shapes; returns ``(B, T, H, HV, K, V)``."""
    for name, t in (("q", q), ("k", k), ("v", v), ("g", g), ("beta", beta)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"gated delta rule: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"gated delta rule: {name} must be floating point, got {t.dtype}")
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(
            f"gated delta rule: q and k must both be [B, T, H, K]; got q {tuple(q.shape)}, k {tuple(k.shape)}"
        )
    B, T, H, K = q.shape
    if v.dim() != 4 or v.shape[:2] != (B, T):
        raise ValueError(f"gated delta rule: v must be [B, T, HV, V] with B={B}, T={T}; got {tuple(v.shape)}")
    HV, V = v.shape[2], v.shape[3]
    if HV % H:
        raise ValueError(f"gated delta rule: value heads HV={HV} must be a multiple of query/key heads H={H}")
    for name, t in (("g", g), ("beta", beta)):
        if tuple(t.shape) != (B, T, HV):
            raise ValueError(f"gated delta rule: {name} must be [B, T, HV] = {(B, T, HV)}, got {tuple(t.shape)}")
    if initial_state is not None and tuple(initial_state.shape) != (B, HV, K, V):
        raise ValueError(
            f"gated delta rule: initial_state must be [B, HV, K, V] = {(B, HV, K, V)}, "
            f"got {tuple(initial_state.shape)}"
        )
    return B, T, H, HV, K, V


def _heads_first(q, k, v, g, beta, HV: int, acc: torch.dtype):
    """``[B, T, H, *] -> [B, HV, T, *]`` in ``acc``; query/key heads are repeated for grouped value heads."""
    H = q.shape[2]
    if HV != H:
        q, k = q.repeat_interleave(HV // H, dim=2), k.repeat_interleave(HV // H, dim=2)
    # contiguous: the chunked form's elementwise products and their gradients run ~20% faster on CPU than on
    # transposed views
    q, k, v = (t.transpose(1, 2).to(acc).contiguous() for t in (q, k, v))
    g, beta = (t.transpose(1, 2).to(acc).contiguous() for t in (g, beta))
    return q, k, v, g, beta


def naive_recurrent_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reference: the recurrence one token at a time (``T`` sequential steps of ``O(K V)`` per head).

    Shapes and dtypes as in the module docstring. Meant for tests and as the ``"naive"`` layer backend.
    """
    B, T, H, HV, K, V = _check_inputs(q, k, v, g, beta, initial_state)
    acc = acc_dtype(q)
    scale = K**-0.5 if scale is None else scale
    q_, k_, v_, g_, b_ = _heads_first(q, k, v, g, beta, HV, acc)
    S = q_.new_zeros(B, HV, K, V) if initial_state is None else initial_state.to(acc)
    outs = []
    for t in range(T):
        S = S * g_[:, :, t].exp()[..., None, None]  # decay first ...
        # ... then the delta-rule write: replace the value stored under k_t by v_t, at strength beta_t.
        u = b_[:, :, t, None] * (v_[:, :, t] - torch.einsum("bhk,bhkv->bhv", k_[:, :, t], S))  # [B, HV, V]
        S = S + k_[:, :, t, :, None] * u[:, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q_[:, :, t] * scale, S))
    o = torch.stack(outs, dim=1).to(q.dtype)  # [B, T, HV, V]
    return o, (S if output_final_state else None)


def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked gated delta rule in the WY / UT-transform form (paper Sec. 3.3; fla's ``chunk`` kernels).

    Within a chunk of ``C`` tokens, with ``gamma_i = sum_{j<=i} g_j`` (cumulative log decay inside the chunk) and
    ``S_0`` the state at the chunk start, the pseudo-values ``u_j`` written at each step satisfy the unit
    lower-triangular system ``(I + A) U = diag(beta) V - diag(beta exp(gamma)) K S_0`` with
    ``A_jm = beta_j exp(gamma_j - gamma_m) k_j . k_m`` for ``m < j``. One triangular solve gives
    ``U = U~ - W S_0``; then ``o_i = scale (exp(gamma_i) q_i S_0 + sum_{j<=i} exp(gamma_i - gamma_j) (q_i . k_j) u_j)``
    and ``S_C = exp(gamma_C) S_0 + sum_j exp(gamma_C - gamma_j) k_j u_j^T``. Everything but the state hand-off
    between chunks is batched over chunks; T need not be a multiple of ``chunk_size`` (the tail is padded with
    ``beta = 0, g = 0, k = 0`` tokens, which leave the state unchanged).

    Cost per head: ``O(T C (K + V) + T K V)`` flops, ``O(T C)`` extra memory for the intra-chunk matrices.

    Args:
        q, k: ``[B, T, H, K]``; v: ``[B, T, HV, V]``; g (log decay, ``<= 0``), beta: ``[B, T, HV]``.
        scale: query scale, default ``K ** -0.5``.
        initial_state: ``[B, HV, K, V]`` or None (zeros).
        output_final_state: also return the state after the last token.
        chunk_size: tokens per chunk C (any positive int; 64 matches fla).

    Returns:
        ``(o [B, T, HV, V] in q's dtype, final_state [B, HV, K, V] in fp32/fp64 or None)``.
    """
    B, T, H, HV, K, V = _check_inputs(q, k, v, g, beta, initial_state)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    acc = acc_dtype(q)
    scale = K**-0.5 if scale is None else scale
    q_, k_, v_, g_, b_ = _heads_first(q, k, v, g, beta, HV, acc)  # [B, HV, T, *]
    C = chunk_size if exporting() else min(chunk_size, T)  # exported: no branch on a symbolic T
    N = num_chunks(T, C)
    pad = N * C - T
    if exporting() or pad:  # exported, T is symbolic: pad always
        q_, k_, v_ = (F.pad(t, (0, 0, 0, pad)) for t in (q_, k_, v_))
        g_, b_ = F.pad(g_, (0, pad)), F.pad(b_, (0, pad))
    q_c = q_.reshape(B, HV, N, C, K) * scale
    k_c = k_.reshape(B, HV, N, C, K)
    v_c = v_.reshape(B, HV, N, C, V)
    b_c = b_.reshape(B, HV, N, C)
    gam = g_.reshape(B, HV, N, C).cumsum(-1)  # [B, HV, N, C]

    # Decay from token j to token i (i >= j) inside a chunk. Entries above the diagonal are set to -inf before
    # exp: their differences can be large and positive (overflow), and exp(-inf) = 0 gives a zero gradient.
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    decay_CC = (gam[..., :, None] - gam[..., None, :]).masked_fill(~causal, float("-inf")).exp()

    # UT transform: solve (I + A) [U~ | W] = [diag(beta) V | diag(beta exp(gamma)) K] once for all chunks.
    # solve_triangular(unitriangular=True) reads only the strict lower part of A and takes the unit diagonal.
    A_CC = (b_c[..., None] * (k_c @ k_c.transpose(-1, -2)) * decay_CC).tril(-1)
    rhs = torch.cat([b_c[..., None] * v_c, (b_c * gam.exp())[..., None] * k_c], dim=-1)
    sol = torch.linalg.solve_triangular(A_CC, rhs, upper=False, unitriangular=True)
    u_tilde, w = sol.split([V, K], dim=-1)  # [B, HV, N, C, V], [B, HV, N, C, K]

    attn_CC = (q_c @ k_c.transpose(-1, -2)) * decay_CC  # causal q.k with decay, diagonal included
    q_decay = q_c * gam.exp()[..., None]  # reads S_0 decayed to token i
    k_decay = k_c * (gam[..., -1:] - gam).exp()[..., None]  # writes decayed to the chunk end
    chunk_decay = gam[..., -1].exp()  # [B, HV, N]

    S0 = q_.new_zeros(B, HV, K, V) if initial_state is None else initial_state.to(acc)

    def step(carry, x):  # the only sequential part: hand the [K, V] state from chunk to chunk
        (S,), (u_t, w_, qd, att, cd, kdT) = carry, x
        u = u_t - w_ @ S  # [B, HV, C, V]
        return (S * cd[..., None, None] + kdT @ u,), (qd @ S + att @ u,)

    # [N, B, HV, ...]; k_decay enters transposed ([.., K, C]; a transpose inside a compiled scan's body breaks
    # its backward)
    chunks = (t.movedim(2, 0) for t in (u_tilde, w, q_decay, attn_CC, chunk_decay, k_decay.transpose(-1, -2)))
    (S,), (outs,) = chunk_scan(step, (S0,), tuple(chunks))
    o = outs.movedim(0, 2).reshape(B, HV, N * C, V)[:, :, :T]
    return o.transpose(1, 2).to(q.dtype), (S if output_final_state else None)
