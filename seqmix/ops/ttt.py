"""TTT-Linear and TTT-MLP scans: the efficient dual-form PyTorch path and its naive twin.

Test-Time Training layers (Sun et al. 2024, arXiv 2407.04620; video form: Dalal et al. 2025, arXiv 2504.05298)
keep, per head, a small model ``f`` (linear, or a 2-layer GELU MLP) as the recurrent state and train it by one
gradient step per mini-batch of ``N`` tokens on the self-supervised loss

    l_j(W) = 1/2 || LN(f_W(k_j)) - r_j ||^2        (LN: per-head LayerNorm with weight/bias, biased variance)

Token ``j`` contributes with step size ``E[i, j]`` to the weights that read out query ``i``:

* non-causal (video) form: ``E[i, j] = eta_j / N`` for every ``i, j`` in the mini-batch (every token of a
  mini-batch is read out with the weights at its end);
* causal (language) form: ``E[i, j] = w_i eta_j`` for ``j <= i`` and 0 otherwise, with token-index weights
  ``w_i = 1 / (i + 1)`` by default, or given (``token_weights``: the language-model variant's learnable
  ``max(1 / (i + 1) + d_i, 0)`` of ttt-lm-pytorch); the state after the mini-batch uses the last row,
  ``w_{N-1} eta_j`` (``eta_j / N`` by default, as in the non-causal form).

``N`` is the number of tokens actually in the mini-batch, so a ragged last mini-batch takes the mean over its
own tokens.

Row-wise rates (non-causal form only): ``eta`` may also be ``[B, H, T, N]``, the rates of row ``i`` for the ``N``
tokens ``j`` of its mini-batch, ``E[i, j] = eta[i, j] / N``; each token is then read out with its own weights (dual
form) and the state after the mini-batch uses the last row. This is the public ttt-video-dit code's arithmetic,
which computes the rates on mini-batches of its storage order and reorders only the rows (see
:class:`seqmix.layers.ttt.TTTConfig` ``eta_order``); ``T`` must then be a multiple of ``N``.

The scans return the raw read-out ``z_i = f_{W_i}(q_i)``; the layer adds ``q + LN(z)``.

Shapes (legend): B batch, H heads, T tokens, K head dim, F inner width (``K`` for TTT-Linear, ``4K`` for
TTT-MLP), N tokens in a mini-batch. Inputs are ``[B, H, T, K]``; ``eta`` is ``[B, H, T]``; the per-head LN
weight/bias are ``[H, K]``; states are tuples ``(W1 [B,H,K,F], b1 [B,H,1,F][, W2 [B,H,F,K], b2 [B,H,1,K]])``.
All arithmetic is fp32 (or fp64); callers cast.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .scan import chunk_scan, exporting, padded_chunks

Kind = Literal["linear", "mlp"]
State = tuple[torch.Tensor, ...]

__all__ = [
    "gelu_tanh",
    "gelu_tanh_grad",
    "head_layer_norm",
    "ln_l2_fwd",
    "ln_l2_grad",
    "step_weights",
    "reconstruction_target",
    "init_state",
    "ttt_scan",
    "ttt_scan_naive",
    "check_scan_inputs",
    "lr_gate",
    "lr_gate_naive",
]

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


class _GeluTanh(torch.autograd.Function):
    """GELU (tanh approximation) whose backward makes its incoming gradient contiguous first: the scan's products
    (``a.mT @ ...``) hand it transposed gradients, on which CPU's ``gelu_backward`` is ~10x slower (TTT-MLP fwd+bwd
    ~10% faster end to end). Its backward is itself differentiable (the naive twin differentiates through it)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return F.gelu(x, approximate="tanh")

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return torch.ops.aten.gelu_backward(grad.contiguous(), x, approximate="tanh")


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    # exported, the plain op (export cannot nest the Function in a scan)
    return F.gelu(x, approximate="tanh") if exporting() else _GeluTanh.apply(x)


class _LrGate(torch.autograd.Function):
    """``x W^T + b`` in ``acc`` (fp32) that keeps ``x`` for backward in its own dtype: autograd would keep the fp32
    copy (under bf16 autocast twice the input's bytes, on every tensor-parallel rank, where the bf16 input is kept
    anyway by the Q/K/V projections); backward remakes it, exactly (upcasting is exact)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.acc, ctx.b_dtype = acc, b.dtype
        return torch.einsum("btd,hd->bth", x.to(acc), w.to(acc)) + b.to(acc)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, w = ctx.saved_tensors
        gx = torch.einsum("bth,hd->btd", g, w.to(ctx.acc)).to(x.dtype) if ctx.needs_input_grad[0] else None
        gw = torch.einsum("bth,btd->hd", g, x.to(ctx.acc)).to(w.dtype) if ctx.needs_input_grad[1] else None
        gb = g.sum((0, 1)).to(ctx.b_dtype) if ctx.needs_input_grad[2] else None
        return gx, gw, gb, None


def lr_gate(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """The inner learning-rate gate's logits ``[B, T, H]`` of ``x [B, T, D]``, ``w [H, D]``, ``b [H]``, computed in
    ``acc``; equal to :func:`lr_gate_naive` (tested) without its fp32 copy of ``x`` kept for backward."""
    return lr_gate_naive(x, w, b, acc) if exporting() else _LrGate.apply(x, w, b, acc)


def lr_gate_naive(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """Twin of :func:`lr_gate` (plain autograd)."""
    return torch.einsum("btd,hd->bth", x.to(acc), w.to(acc)) + b.to(acc)


def gelu_tanh_grad(x: torch.Tensor) -> torch.Tensor:
    """d/dx GELU_tanh(x), written out so the scan does not need autograd for the inner gradient."""
    t = torch.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x.pow(3)))
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * (_SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x))


def _head_affine(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # [H, K] -> broadcastable against [B, H, N, K]
    return w.view(1, w.shape[0], 1, w.shape[1]).to(x.dtype)


def head_layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-head LayerNorm over the last dim (biased variance, eps inside the sqrt). x: [B, H, N, K]; w, b: [H, K]."""
    mu = x.mean(-1, keepdim=True)
    xc = x - mu
    rstd = torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + eps)
    return xc * rstd * _head_affine(w, x) + _head_affine(b, x)


def ln_l2_fwd(z: torch.Tensor, r: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float):
    """Gradient ``g`` w.r.t. ``z`` of ``1/2 || LN(z) w + b - r ||^2`` per row, and what its backward needs.

    ``LN`` uses the biased variance with ``eps`` inside the square root; ``w, b`` broadcast against ``z``.
    ``g = rstd (gx - mean(gx) - xh mean(gx xh))`` with ``xh = (z - mean z) rstd``, ``gx = (xh w + b - r) w``.
    Returns ``(g, (xh, rstd, gx, e))`` with ``e = xh w + b - r`` (the hand-written backward of
    :mod:`seqmix.kernels.ttt_ref` reuses them).
    """
    mu = z.mean(-1, keepdim=True)
    zc = z - mu
    rstd = torch.rsqrt((zc * zc).mean(-1, keepdim=True) + eps)
    xh = zc * rstd
    e = xh * w + b - r
    gx = e * w
    g = rstd * (gx - gx.mean(-1, keepdim=True) - xh * (gx * xh).mean(-1, keepdim=True))
    return g, (xh, rstd, gx, e)


def ln_l2_grad(z: torch.Tensor, target: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """Gradient w.r.t. ``z`` of ``1/2 || LN(z) - target ||^2`` row by row. z, target: [B, H, N, K]; w, b: [H, K]."""
    return ln_l2_fwd(z, target, _head_affine(w, z), _head_affine(b, z), eps)[0]


def reconstruction_target(
    v: torch.Tensor, k: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """The regression target ``r = LN_t(v - k)`` of the public video code.

    ``LN_t`` normalises with the *unbiased* standard deviation and adds ``eps`` to the std (not the variance),
    as the reference does; the weight/bias are the inner LN's. Shapes as ``head_layer_norm``.
    """
    d = v - k
    if d.numel() == 0:  # a batch of 0: nothing to normalise (and std() would warn about zero degrees of freedom)
        return d
    mu = d.mean(-1, keepdim=True)
    std = d.std(-1, keepdim=True, unbiased=True)
    return (d - mu) / (std + eps) * _head_affine(w, d) + _head_affine(b, d)


def init_state(params: tuple[torch.Tensor, ...], batch: int, dtype: torch.dtype) -> State:
    """Expand per-head initial weights ``[H, ...]`` to per-sequence states ``[B, H, ...]`` in ``dtype``."""
    return tuple(p.to(dtype).unsqueeze(0).expand(batch, *p.shape) for p in params)


def step_weights(
    eta: torch.Tensor, causal: bool, token_weights: torch.Tensor | None = None, count: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """eta: [B, H, N] -> (E [B, H, N, N] read-out step sizes, last [B, H, N] state-update step sizes).

    ``token_weights`` ([>= N], causal form only): per-position weights ``w_i`` of row ``i`` (default ``1/(i+1)``).
    Row-wise rates ``eta [B, H, N, N]`` (non-causal form): ``E = eta / N``, ``last = E[..., -1, :]``.
    ``count``: the mini-batch's real tokens (a 0-dim tensor) when its tail is padding with ``eta = 0``; the
    averages divide by it instead of N, so a padded mini-batch steps as its unpadded part would.
    """
    N = eta.shape[-1]
    if eta.dim() == 4:
        E = eta / N
        return E, E[..., -1, :]
    if causal and token_weights is not None:
        w = token_weights[:N].to(eta.dtype)
        return torch.tril(w[:, None] * eta[..., None, :]), w[N - 1] * eta
    last = eta / (N if count is None else count.to(eta.dtype))
    if causal:
        pos = 1.0 / torch.arange(1, N + 1, device=eta.device, dtype=eta.dtype)  # token-position weighting
        E = torch.tril(pos[:, None] * eta[..., None, :])
    else:
        E = last[..., None, :].expand(*eta.shape, N)
    return E, last


def _mb_step(
    kind: Kind,
    state: State,
    q: torch.Tensor,
    k: torch.Tensor,
    r: torch.Tensor,
    eta: torch.Tensor,
    ln_w: torch.Tensor,
    ln_b: torch.Tensor,
    eps: float,
    causal: bool,
    dual: bool,
    token_weights: torch.Tensor | None = None,
    count: torch.Tensor | None = None,
) -> tuple[State, torch.Tensor]:
    """One mini-batch: inner gradient at the current state, read-out for the queries, updated state.

    q, k, r: [B, H, N, K]; eta: [B, H, N]; count: see :func:`step_weights`. Returns (new state, z [B, H, N, K]).
    """
    E, last = step_weights(eta, causal, token_weights, count)
    lw = last.unsqueeze(-1)  # [B, H, N, 1]
    if kind == "linear":
        W1, b1 = state
        z = k @ W1 + b1
        g1 = ln_l2_grad(z, r, ln_w, ln_b, eps)  # [B, H, N, K]
        W1n = W1 - k.mT @ (lw * g1)
        b1n = b1 - (lw * g1).sum(-2, keepdim=True)
        if dual:
            # z_i = q_i W_i + b_i with W_i = W1 - sum_j E_ij k_j^T g_j, without materialising any W_i.
            zq = q @ W1 + b1 - (E * (q @ k.mT)) @ g1 - E @ g1
        else:
            zq = q @ W1n + b1n
        return (W1n, b1n), zq

    W1, b1, W2, b2 = state
    z1 = k @ W1 + b1  # [B, H, N, F]
    a = gelu_tanh(z1)
    z2 = a @ W2 + b2  # [B, H, N, K]
    g2 = ln_l2_grad(z2, r, ln_w, ln_b, eps)
    g1 = (g2 @ W2.mT) * gelu_tanh_grad(z1)  # [B, H, N, F]
    W1n = W1 - k.mT @ (lw * g1)
    b1n = b1 - (lw * g1).sum(-2, keepdim=True)
    W2n = W2 - a.mT @ (lw * g2)
    b2n = b2 - (lw * g2).sum(-2, keepdim=True)
    if dual:
        z1q = q @ W1 + b1 - (E * (q @ k.mT)) @ g1 - E @ g1
        aq = gelu_tanh(z1q)
        zq = aq @ W2 + b2 - (E * (aq @ a.mT)) @ g2 - E @ g2
    else:
        zq = gelu_tanh(q @ W1n + b1n) @ W2n + b2n
    return (W1n, b1n, W2n, b2n), zq


def check_scan_inputs(q, k, r, eta, state, kind, mini_batch_size, causal=True, token_weights=None):
    if token_weights is not None:
        if not causal:
            raise ValueError("token_weights weight the rows of the causal form; the non-causal form has none")
        if token_weights.shape != (mini_batch_size,):
            raise ValueError(f"token_weights must be [mini_batch_size] = [{mini_batch_size}], "
                             f"got {tuple(token_weights.shape)}")
    if kind not in ("linear", "mlp"):
        raise ValueError(f"kind must be 'linear' or 'mlp', got {kind!r}")
    if not (q.shape == k.shape == r.shape) or q.dim() != 4:
        raise ValueError(f"q, k, r must share shape [B, H, T, K]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(r.shape)}")
    if eta.dim() == 4 and not causal:  # row-wise rates (see the module docstring)
        if eta.shape != (*q.shape[:3], mini_batch_size) or q.shape[2] % mini_batch_size:
            raise ValueError(f"row-wise eta must be [B, H, T, N] = {(*tuple(q.shape[:3]), mini_batch_size)} with T "
                             f"a multiple of N, got {tuple(eta.shape)}")
    elif eta.shape != q.shape[:3]:
        raise ValueError(f"eta must be [B, H, T] = {tuple(q.shape[:3])} (or [B, H, T, N] row-wise rates in the "
                         f"non-causal form), got {tuple(eta.shape)}")
    if len(state) != (2 if kind == "linear" else 4):
        raise ValueError(f"state for kind={kind!r} must have {2 if kind == 'linear' else 4} tensors, got {len(state)}")
    if not isinstance(mini_batch_size, int) or mini_batch_size < 1:
        raise ValueError(f"mini_batch_size must be a positive int, got {mini_batch_size!r}")


def ttt_scan(
    q: torch.Tensor,
    k: torch.Tensor,
    r: torch.Tensor,
    eta: torch.Tensor,
    ln_w: torch.Tensor,
    ln_b: torch.Tensor,
    state: State,
    *,
    kind: Kind,
    causal: bool,
    mini_batch_size: int,
    eps: float = 1e-8,
    checkpoint_group: int = 0,
    dual: bool | None = None,
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, State]:
    """Efficient TTT scan (dual form for the causal read-out), batched over B and H.

    Args:
        q, k, r: queries, keys and regression targets ``[B, H, T, K]``; ``T`` need not divide ``mini_batch_size``.
        eta: per-token inner learning rates ``[B, H, T]`` (already including base lr / head dim), or row-wise
            ``[B, H, T, N]`` in the non-causal form (module docstring).
        ln_w, ln_b: per-head LN weight and bias ``[H, K]``.
        state: initial state (see module docstring), e.g. from :func:`init_state`.
        kind: ``"linear"`` or ``"mlp"``. causal: causal (language) or non-causal (video) form.
        checkpoint_group: if > 0 and grad is enabled, recompute groups of this many mini-batches in backward
            (activation memory O(T / group) states instead of O(T) intermediates).
        dual: read out with the dual form (default: only in the causal form, where it avoids per-token weights;
            in the non-causal form the updated state is needed anyway, so reading out with it is cheaper).
        token_weights: causal form only, ``[mini_batch_size]`` weights ``w_i >= 0`` of the rows of the step-size
            matrix (default ``1 / (i + 1)``); the language-model variant's learnable token-index weights.

    Returns:
        ``z [B, H, T, K]`` (raw inner-model read-out) and the state after the last *complete* mini-batch
        (tokens past ``T // N * N`` are a pending partial mini-batch; a causal caller re-feeds them).
    """
    check_scan_inputs(q, k, r, eta, state, kind, mini_batch_size, causal, token_weights)
    dual = (causal or eta.dim() == 4) if dual is None else dual
    if eta.dim() == 4 and not dual:
        raise ValueError("row-wise rates read every token with its own weights: they need the dual read-out")
    if causal and not dual:
        raise ValueError("the causal form needs the dual read-out (dual=True or None): primal read-out is per mini-batch")
    if exporting():
        return _ttt_scan_padded(q, k, r, eta, ln_w, ln_b, state, kind, causal, mini_batch_size, eps, dual,
                                token_weights)
    B, H, T, K = q.shape
    N = mini_batch_size
    n_full = T // N
    # One split per input (its backward is a single cat); slicing per mini-batch would make backward
    # allocate a full-size gradient per slice, O(T^2) memory traffic.
    chunks = list(zip(*(torch.split(t, N, dim=2) for t in (q, k, r, eta))))
    args = (ln_w, ln_b, eps, causal, dual)
    n_state = len(state)

    def run_group(n: int, *flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # token_weights travel as a trailing input (when given) so that checkpointing differentiates them too.
        # No reference to the loop's `state` (reassigned below): a checkpoint keeps this function, and a group's
        # later states in its closure would make an autograd reference cycle that an outer checkpoint's
        # recomputation never frees (each training step would leak a block's recomputed graph).
        tw = flat[-1] if token_weights is not None else None
        st, mbs = tuple(flat[:n_state]), flat[n_state:]
        zs = []
        for i in range(n):
            st, z = _mb_step(kind, st, *mbs[4 * i : 4 * i + 4], *args, tw)
            zs.append(z)
        return (torch.cat(zs, dim=2), *st)

    use_ckpt = checkpoint_group > 0 and torch.is_grad_enabled()
    group = checkpoint_group if use_ckpt else max(n_full, 1)
    outs: list[torch.Tensor] = []
    for g0 in range(0, n_full, group):
        g1 = min(g0 + group, n_full)
        flat = [t for c in chunks[g0:g1] for t in c] + ([token_weights] if token_weights is not None else [])
        if use_ckpt:
            z, *st = checkpoint(run_group, g1 - g0, *state, *flat, use_reentrant=False)
        else:
            z, *st = run_group(g1 - g0, *state, *flat)
        state = tuple(st)
        outs.append(z)
    boundary_state = tuple(state)
    if T > n_full * N:
        _, z = _mb_step(kind, state, *chunks[n_full], *args, token_weights)
        outs.append(z)
    return torch.cat(outs, dim=2), boundary_state


def _ttt_scan_padded(q, k, r, eta, ln_w, ln_b, state, kind, causal, N, eps, dual, token_weights):
    """:func:`ttt_scan` under ``torch.export``: the same mini-batch steps as one
    :func:`~seqmix.ops.scan.chunk_scan`, so T stays symbolic. The tail is padded to whole mini-batches with
    ``eta = 0`` (a padded token updates nothing; causal reads never look ahead; the non-causal average divides by
    the real count), and the carried state skips incomplete mini-batches, so it is the state after the last complete
    one, as eagerly. ``checkpoint_group`` does not apply here."""
    T = q.shape[2]
    xs, count = padded_chunks((q, k, r, eta), N)  # [n, B, H, N, ...], count [n]
    eps = torch.full((), eps, dtype=q.dtype, device=q.device)  # the scan op closes over tensors and ints only

    def step(st, x):
        qc, kc, rc, ec, cnt = x
        # (an all-padding mini-batch divides its zero rates by 1, not 0: no NaN reaches the backward of `where`)
        new, z = _mb_step(kind, st, qc, kc, rc, ec, ln_w, ln_b, eps, causal, dual, token_weights, cnt.clamp(min=1))
        return tuple(torch.where(cnt == N, a, b) for a, b in zip(new, st)), (z,)

    st, (z,) = chunk_scan(step, state, xs + (count,))
    return z.movedim(0, 2).flatten(2, 3)[:, :, :T], tuple(st)


def ttt_scan_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    r: torch.Tensor,
    eta: torch.Tensor,
    ln_w: torch.Tensor,
    ln_b: torch.Tensor,
    state: State,
    *,
    kind: Kind,
    causal: bool,
    mini_batch_size: int,
    eps: float = 1e-8,
    checkpoint_group: int = 0,
    dual: bool | None = None,
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, State]:
    """Reference twin of :func:`ttt_scan`: primal form, inner gradients by autograd, a loop per mini-batch
    (and per token in the causal form, where every token gets its own materialised weights).

    Same signature and return value as :func:`ttt_scan` (``checkpoint_group`` and ``dual`` are ignored).
    Slow; for tests and small inputs.
    """
    check_scan_inputs(q, k, r, eta, state, kind, mini_batch_size, causal, token_weights)
    B, H, T, K = q.shape
    N = mini_batch_size
    if token_weights is None:  # the default token-position weighting 1 / (i + 1)
        token_weights = 1.0 / torch.arange(1, N + 1, device=q.device, dtype=q.dtype)

    def f(params: State, x: torch.Tensor) -> torch.Tensor:
        if kind == "linear":
            W1, b1 = params
            return x @ W1 + b1
        W1, b1, W2, b2 = params
        return gelu_tanh(x @ W1 + b1) @ W2 + b2

    def ln(z: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(z, (K,), eps=eps) * _head_affine(ln_w, z) + _head_affine(ln_b, z)

    outs = []
    boundary_state = tuple(state)
    grad_outside = torch.is_grad_enabled()
    if torch.is_inference_mode_enabled():  # inference tensors cannot enter an autograd graph: use normal copies
        with torch.inference_mode(False):
            q, k, r, eta, ln_w, ln_b, token_weights = (t.clone() for t in (q, k, r, eta, ln_w, ln_b, token_weights))
            state = tuple(t.clone() for t in state)
    with torch.inference_mode(False), torch.enable_grad():
        # Outside grad mode the state may still say requires_grad (a view of a parameter taken under no_grad) but
        # carries no graph: detach it so the inner autograd step differentiates a fresh leaf.
        params = tuple(p if grad_outside and p.requires_grad else p.detach().requires_grad_() for p in state)
        for t0 in range(0, T, N):
            s = slice(t0, min(t0 + N, T))
            qi, ki, ri, ei = q[:, :, s], k[:, :, s], r[:, :, s], eta[:, :, s]
            n = ki.shape[2]
            loss_j = 0.5 * (ln(f(params, ki)) - ri).pow(2).sum(-1)  # [B, H, n]

            def step(weights: torch.Tensor) -> State:  # weights [B, H, n]
                grads = torch.autograd.grad((weights * loss_j).sum(), params, create_graph=True, retain_graph=True)
                return tuple(p - g for p, g in zip(params, grads))

            if causal:
                zs = []
                for i in range(n):  # token i: its own weights after the steps of tokens 0..i, each times w_i
                    w_i = torch.cat([ei[..., : i + 1] * token_weights[i].to(ei.dtype), torch.zeros_like(ei[..., i + 1:])], -1)
                    zs.append(f(step(w_i), qi[:, :, i : i + 1]))
                z = torch.cat(zs, dim=2)
                new = step(ei * token_weights[n - 1].to(ei.dtype))
            elif ei.dim() == 4:  # row-wise rates: token i read with the step of its own row
                z = torch.cat([f(step(ei[:, :, i] / n), qi[:, :, i : i + 1]) for i in range(n)], dim=2)
                new = step(ei[:, :, n - 1] / n)
            else:
                new = step(ei / n)
                z = f(new, qi)
            outs.append(z)
            if n == N:
                params = new
                boundary_state = new
    z = torch.cat(outs, dim=2)
    if not grad_outside:  # the inner autograd graph is an implementation detail; do not leak it
        return z.detach(), tuple(p.detach() for p in boundary_state)
    return z, boundary_state
