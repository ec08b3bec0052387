"""Large-chunk test-time training (LaCT) scans: the chunked matmul form and its naive per-token twin.

LaCT (Zhang et al. 2025, "Test-Time Training Done Right", arXiv 2505.23884) keeps, per head, a SwiGLU MLP

    f_W(x) = w1 (silu(w0 x) * (w2 x))        w0, w2: [F, K], w1: [K, F]

as fast weights and updates it once per chunk of ``C`` tokens (thousands, where TTT-MLP uses 16-64) on the
negative dot-product loss ``l_t(W) = -<f_W(k_t), v_t>`` with a learnable per-token learning rate for each weight
(``lr0, lr1, lr2``). One chunk step, for every weight ``w_i``:

    g_i  = sum_{t in chunk} lr_i[t] * d<f_W(k_t), v_t>/d w_i          (gradient ascent on the dot product)
    g_i <- g_i + m * g_i_prev                                          (momentum, optional; m = chunk mean)
    g_i <- NewtonSchulz(g_i)                                           (Muon orthogonalisation, optional)
    w_i <- w_i + g_i
    w_i <- w_i / ||w_i||_row * n_i                                     (renormalisation, optional)

where the row norms are taken over the input dimension of each weight (the last axis) and the target ``n_i`` is
fixed for the whole sequence: the rows' norms in the initial fast weights (the public code computes them once, from
the weights it starts with, and renormalises every update to them; so every row keeps exactly its initial norm).
A caller that continues a sequence from a carried state passes the initial weights' norms as ``norms`` so that the
continuation equals one pass; by default they are the norms of the state given.

Pre-norm form (``prenorm=True``, the public LM layer's ``ttt_prenorm``): the updates accumulate on raw weights
``W`` without renormalisation, and the weights every read and every inner gradient use are their renormalised copy
``renorm(W)`` (the initial weights themselves before the first update). The state then holds both: the raw weights,
then the weights in use.

Order inside a chunk (``causal``):

* non-causal (bidirectional / video) form: update with the chunk, then read its queries with the new weights;
* causal form: read the chunk's queries with the weights from before it, then update ("apply then update"); the
  last, possibly partial, chunk only reads. Precision inside a chunk comes from window attention beside it.

Chunks are either ``chunk_size`` tokens each (the last one possibly shorter) or given as ``chunk_bounds``, the
cumulative boundaries ``(0, b_1, ..., T)`` of chunks of any lengths (a video's frames or segments, which differ in
length: the first 3 s segment has 13 latent frames, the others 12). Explicit chunks are all complete: in the causal
form every one of them, the last included, updates the weights after it is read.

Shapes (legend: B batch, H heads, T tokens, K head dim, F fast-weight hidden width, C chunk): ``q, k, v``
``[B, H, T, K]``; ``lr0, lr1, lr2`` ``[B, H, T]``; ``momentum`` ``[B, H, T]`` (or ``None``). The state is a tuple
``(w0 [B,H,F,K], w1 [B,H,K,F], w2 [B,H,F,K])``, followed by the weights in use (pre-norm form only) and by the
previous updates ``(g0, g1, g2)`` of the same shapes when momentum is used. All arithmetic is in the dtype of the state (fp32 under bf16 autocast, or fp64);
callers cast. The Newton-Schulz iteration also runs in that dtype (the public code runs it in bf16).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .scan import chunk_scan, exporting, padded_chunks

State = tuple[torch.Tensor, ...]

__all__ = [
    "NS_COEFFS",
    "newton_schulz",
    "swiglu_apply",
    "chunk_update",
    "chunk_spans",
    "lact_scan",
    "lact_scan_naive",
]

# Quintic Newton-Schulz coefficients (a, b, c) of the five-step orthogonalisation used by LaCT's Muon.
NS_COEFFS = (
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)


def newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately orthogonalise each matrix of ``g [..., M, N]`` (the zeroth power ``U V^T`` of its SVD).

    The iteration ``X <- a X + (b A + c A^2) X`` with ``A = X X^T`` runs on the wide orientation (``M <= N``)
    after scaling ``X`` to Frobenius norm 1, which bounds its spectral norm by 1. ``steps`` <= 5 uses the first
    coefficient triples of :data:`NS_COEFFS`; more steps repeat the last one.
    """
    if steps < 1:
        raise ValueError(f"Newton-Schulz needs steps >= 1, got {steps}")
    tall = g.shape[-2] > g.shape[-1]
    x = g.transpose(-1, -2) if tall else g
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for i in range(steps):
        a, b, c = NS_COEFFS[min(i, len(NS_COEFFS) - 1)]
        A = x @ x.transpose(-1, -2)
        x = a * x + (b * A + c * (A @ A)) @ x
    return x.transpose(-1, -2) if tall else x


def swiglu_apply(w0: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``f_W(x)`` for ``x [B, H, N, K]`` with per-head weights ``w0, w2 [B,H,F,K]``, ``w1 [B,H,K,F]`` -> ``[B,H,N,K]``."""
    hidden = F.silu(x @ w0.transpose(-1, -2)) * (x @ w2.transpose(-1, -2))  # [B, H, N, F]
    return hidden @ w1.transpose(-1, -2)


def _silu_grad(x: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(x)
    return s * (1 + x * (1 - s))


def chunk_update(
    weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    k: torch.Tensor,
    v: torch.Tensor,
    lrs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The summed, learning-rate weighted ascent directions ``(g0, g1, g2)`` of one chunk, written out by hand.

    ``k, v [B, H, N, K]``, ``lrs`` three ``[B, H, N]``; returns tensors shaped like ``weights``.
    """
    w0, w1, w2 = weights
    lr0, lr1, lr2 = (lr.unsqueeze(-1) for lr in lrs)  # [B, H, N, 1]
    gate = k @ w0.transpose(-1, -2)  # [B, H, N, F]
    up = k @ w2.transpose(-1, -2)
    act = F.silu(gate)
    hidden = act * up
    d_hidden = v @ w1  # [B, H, N, F]: d<w1 h, v>/dh
    g1 = (v * lr1).transpose(-1, -2) @ hidden  # [B, H, K, F]
    g2 = (d_hidden * act * lr2).transpose(-1, -2) @ k  # [B, H, F, K]
    g0 = (d_hidden * up * _silu_grad(gate) * lr0).transpose(-1, -2) @ k
    return g0, g1, g2


def _step(
    weights: tuple[torch.Tensor, ...],
    grads: tuple[torch.Tensor, ...],
    prev: tuple[torch.Tensor, ...] | None,
    m: torch.Tensor | None,
    muon_steps: int,
    norms: tuple[torch.Tensor, ...] | None,
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...] | None]:
    """Momentum, Muon, addition and renormalisation (to the row norms ``norms``; None: no renormalisation) of one
    chunk step (shared by both scans: the definition)."""
    if m is not None:
        grads = tuple(g + m[..., None, None] * p for g, p in zip(grads, prev))
        prev = grads
    if muon_steps:
        grads = tuple(newton_schulz(g, muon_steps) for g in grads)
    new = []
    for i, (w, g) in enumerate(zip(weights, grads)):
        u = w + g
        if norms is not None:
            u = u / (u.norm(dim=-1, keepdim=True) + 1e-5) * norms[i]
        new.append(u)
    return tuple(new), prev


def _target_norms(weights: tuple[torch.Tensor, ...], renorm: bool,
                  norms: Sequence[torch.Tensor] | None) -> tuple[torch.Tensor, ...] | None:
    """The row norms every update is renormalised to: ``norms`` (each broadcastable to its weight's ``[..., rows,
    1]``), else the rows' norms in ``weights``; None without ``renorm``."""
    if not renorm:
        return None
    if norms is None:
        return tuple(w.norm(dim=-1, keepdim=True) for w in weights)
    norms = tuple(norms)
    if len(norms) != 3:
        raise ValueError(f"norms must hold 3 tensors (for w0, w1, w2), got {len(norms)}")
    return norms


def _check(q, k, v, lrs, momentum, state, prenorm: bool = False) -> None:
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must share one shape [B, H, T, K], got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    for name, lr in zip(("lr0", "lr1", "lr2"), lrs):
        if lr.shape != q.shape[:3]:
            raise ValueError(f"{name} must be [B, H, T] = {tuple(q.shape[:3])}, got {tuple(lr.shape)}")
    if momentum is not None and momentum.shape != q.shape[:3]:
        raise ValueError(f"momentum must be [B, H, T] = {tuple(q.shape[:3])}, got {tuple(momentum.shape)}")
    names = "w0, w1, w2" + (", e0, e1, e2 (in use)" if prenorm else "") + (", g0, g1, g2" if momentum is not None
                                                                          else "")
    if len(state) != 3 * (1 + prenorm + (momentum is not None)):
        raise ValueError(f"state must hold {names}, got {len(state)} tensors")


def _unpack(state, momentum, prenorm: bool):
    """``(raw weights, weights in use, previous updates or None)`` of a state (see the module docstring)."""
    main = tuple(state[:3])
    used = tuple(state[3:6]) if prenorm else main
    prev = tuple(state[6:] if prenorm else state[3:]) if momentum is not None else None
    return main, used, prev


def _pack(main, used, prev, prenorm: bool) -> tuple[torch.Tensor, ...]:
    return main + (used if prenorm else ()) + (prev if prev is not None else ())


def _advance(main, grads, prev, m, muon_steps: int, norms, prenorm: bool):
    """One chunk's update: ``(raw weights, weights in use, previous updates)`` after it (post-norm: the
    renormalised weights are both; pre-norm: raw accumulation, renormalised copy in use)."""
    if not prenorm:
        new, prev = _step(main, grads, prev, m, muon_steps, norms)
        return new, new, prev
    main, prev = _step(main, grads, prev, m, muon_steps, None)
    used = main if norms is None else tuple(w / (w.norm(dim=-1, keepdim=True) + 1e-5) * n for w, n in zip(main, norms))
    return main, used, prev


def chunk_spans(T: int, chunk_size: int | None, chunk_bounds: Sequence[int] | None,
                causal: bool) -> list[tuple[int, int, bool]]:
    """The chunks ``(start, stop, updates)`` of ``T`` tokens: ``chunk_size`` tokens each, or ``chunk_bounds``
    ``(0, b_1, ..., T)``; ``updates`` is False only for a partial last ``chunk_size`` chunk of the causal form."""
    if (chunk_size is None) == (chunk_bounds is None):
        raise ValueError("give exactly one of chunk_size (tokens per chunk) and chunk_bounds (boundaries (0, ..., T))")
    if chunk_bounds is None:
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        return [(s, min(s + chunk_size, T), min(s + chunk_size, T) - s == chunk_size or not causal)
                for s in range(0, T, chunk_size)]
    b = tuple(chunk_bounds)
    if (len(b) < 2 or any(not isinstance(x, int) or isinstance(x, bool) for x in b) or b[0] != 0 or b[-1] != T
            or any(e <= s for s, e in zip(b, b[1:]))):
        raise ValueError(f"chunk_bounds must be strictly increasing ints from 0 to T={T}, got {b}")
    return [(s, e, True) for s, e in zip(b, b[1:])]


def lact_scan(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lr0: torch.Tensor,
    lr1: torch.Tensor,
    lr2: torch.Tensor,
    state: State,
    *,
    chunk_size: int | None = None,
    chunk_bounds: Sequence[int] | None = None,
    causal: bool,
    momentum: torch.Tensor | None = None,
    muon_steps: int = 0,
    renorm: bool = True,
    norms: Sequence[torch.Tensor] | None = None,
    prenorm: bool = False,
) -> tuple[torch.Tensor, State]:
    """LaCT over ``T`` tokens in chunks of ``chunk_size`` or between ``chunk_bounds`` (exactly one of them): batched
    matmuls per chunk, hand-written inner gradient.

    ``renorm`` renormalises every update's rows to ``norms`` (``[B, H, F, 1], [B, H, K, 1], [B, H, F, 1]`` or
    broadcastable; default: the row norms of ``state``'s weights, computed once, as the public code does).

    Returns ``(o [B, H, T, K], state)``; in the causal form the state is the one after the last COMPLETE chunk
    (a partial last ``chunk_size`` chunk only reads), in the non-causal form after every chunk.
    """
    lrs = (lr0, lr1, lr2)
    _check(q, k, v, lrs, momentum, state, prenorm)
    if exporting() and chunk_bounds is None:
        return _lact_scan_padded(q, k, v, lrs, state, chunk_size, causal, momentum, muon_steps,
                                 _target_norms(state[:3], renorm, norms), prenorm)
    chunks = chunk_spans(q.shape[2], chunk_size, chunk_bounds, causal)
    main, used, prev = _unpack(state, momentum, prenorm)
    norms = _target_norms(main, renorm, norms)
    outs = []
    for s, e, updates in chunks:
        m = momentum[:, :, s:e].mean(-1) if momentum is not None else None
        if causal:
            outs.append(swiglu_apply(*used, q[:, :, s:e]))
        if updates:
            grads = chunk_update(used, k[:, :, s:e], v[:, :, s:e], tuple(lr[:, :, s:e] for lr in lrs))
            main, used, prev = _advance(main, grads, prev, m, muon_steps, norms, prenorm)
        if not causal:
            outs.append(swiglu_apply(*used, q[:, :, s:e]))
    return torch.cat(outs, dim=2), _pack(main, used, prev, prenorm)


def _lact_scan_padded(q, k, v, lrs, state, C, causal, momentum, muon_steps, norms, prenorm):
    """:func:`lact_scan` with ``chunk_size`` under ``torch.export``: the chunk steps as one
    :func:`~seqmix.ops.scan.chunk_scan`, so T stays symbolic. The tail is padded to whole chunks with learning rates
    0 (no ascent direction), momentum averages over the real tokens, and a chunk updates the state exactly when it
    would eagerly (causal: complete chunks; non-causal: every chunk holding a real token)."""
    if not isinstance(C, int) or isinstance(C, bool) or C < 1:
        raise ValueError(f"chunk_size must be a positive int, got {C!r}")
    T = q.shape[2]
    per_token = lrs + ((momentum,) if momentum is not None else ())
    xs, count = padded_chunks((q, k, v) + per_token, C)  # [n, B, H, C, ...], count [n]

    def step(carry, x):
        main, used, prev = _unpack(carry, momentum, prenorm)
        qc, kc, vc, *rest = x[:-1]
        cnt = x[-1]
        m = rest[3].sum(-1) / cnt.clamp(min=1) if momentum is not None else None
        out = swiglu_apply(*used, qc) if causal else None
        new = _pack(*_advance(main, chunk_update(used, kc, vc, tuple(rest[:3])), prev, m, muon_steps, norms,
                              prenorm), prenorm)
        keep = cnt == C if causal else cnt > 0
        new = tuple(torch.where(keep, a, b) for a, b in zip(new, carry))
        if not causal:
            out = swiglu_apply(*_unpack(new, momentum, prenorm)[1], qc)
        return new, (out,)

    carry, (o,) = chunk_scan(step, tuple(state), xs + (count,))
    return o.movedim(0, 2).flatten(2, 3)[:, :, :T], carry


def lact_scan_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lr0: torch.Tensor,
    lr1: torch.Tensor,
    lr2: torch.Tensor,
    state: State,
    *,
    chunk_size: int | None = None,
    chunk_bounds: Sequence[int] | None = None,
    causal: bool,
    momentum: torch.Tensor | None = None,
    muon_steps: int = 0,
    renorm: bool = True,
    norms: Sequence[torch.Tensor] | None = None,
    prenorm: bool = False,
) -> tuple[torch.Tensor, State]:
    """Twin of :func:`lact_scan`: per-token inner gradients by autograd, per-token read-out, one token at a time.

    Slow (meant for tests in fp64); differentiable with respect to every input and the initial state.
    """
    lrs = (lr0, lr1, lr2)
    _check(q, k, v, lrs, momentum, state, prenorm)
    chunks = chunk_spans(q.shape[2], chunk_size, chunk_bounds, causal)
    main, weights, prev = _unpack(state, momentum, prenorm)  # weights: the ones in use
    outs = []

    def read(ws, s, e):
        w0, w1, w2 = ws
        rows = []
        for t in range(s, e):
            x = q[:, :, t]  # [B, H, K]
            h = F.silu(torch.einsum("bhfk,bhk->bhf", w0, x)) * torch.einsum("bhfk,bhk->bhf", w2, x)
            rows.append(torch.einsum("bhkf,bhf->bhk", w1, h))
        return torch.stack(rows, dim=2)

    grad_outside = torch.is_grad_enabled()
    tensors = (q, k, v, *lrs) + ((momentum,) if momentum is not None else ())
    if torch.is_inference_mode_enabled():  # inference tensors cannot enter an autograd graph: use normal copies
        with torch.inference_mode(False):
            tensors = tuple(t.clone() for t in tensors)
            main, weights = tuple(w.clone() for w in main), tuple(w.clone() for w in weights)
            prev = tuple(p.clone() for p in prev) if prev is not None else None
    if not grad_outside:  # a view of a parameter taken under no_grad says requires_grad but carries no graph
        main, weights = tuple(w.detach() for w in main), tuple(w.detach() for w in weights)
    q, k, v, lr0, lr1, lr2 = tensors[:6]
    lrs = (lr0, lr1, lr2)
    momentum = tensors[6] if momentum is not None else None
    with torch.inference_mode(False), torch.enable_grad():
        if norms is not None and (torch.is_inference_mode_enabled() or not grad_outside):
            norms = tuple(n.detach().clone() for n in norms)
        norms = _target_norms(main, renorm, norms)
        for s, e, updates in chunks:
            m = momentum[:, :, s:e].mean(-1) if momentum is not None else None
            if causal:
                outs.append(read(weights, s, e))
            if updates:
                # Detached leaves for the inner derivative; create_graph keeps the outer graph through it.
                grads = [torch.zeros_like(w) for w in weights]
                for t in range(s, e):
                    ws = [w if w.requires_grad else w.detach().requires_grad_(True) for w in weights]
                    w0, w1, w2 = ws
                    x = k[:, :, t]
                    h = F.silu(torch.einsum("bhfk,bhk->bhf", w0, x)) * torch.einsum("bhfk,bhk->bhf", w2, x)
                    score = (torch.einsum("bhkf,bhf->bhk", w1, h) * v[:, :, t]).sum(-1)  # [B, H]
                    for i in range(3):
                        # Each weight has its own rate: d(sum_bh lr_i * score)/d w_i, batch/head entries separate.
                        (g,) = torch.autograd.grad((lrs[i][:, :, t] * score).sum(), ws[i], create_graph=True)
                        grads[i] = grads[i] + g
                main, weights, prev = _advance(main, tuple(grads), prev, m, muon_steps, norms, prenorm)
            if not causal:
                outs.append(read(weights, s, e))
    o, state = torch.cat(outs, dim=2), _pack(main, weights, prev, prenorm)
    if not grad_outside:  # the inner autograd graph is an implementation detail; do not leak it
        o, state = o.detach(), tuple(t.detach() for t in state)
    return o, state
