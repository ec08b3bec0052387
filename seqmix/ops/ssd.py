"""State-space duality (SSD) scan of Mamba-2 (Dao & Gu 2024, "Transformers are SSMs", arXiv 2405.21060).

Per head ``h`` the selective SSM with scalar decay is, for tokens ``t = 0..T-1``::

    S_t = exp(dt_t A_h) S_{t-1} + dt_t x_t B_t^T        S_t: [P, N]
    y_t = S_t C_t + D_h x_t

with ``x_t: [P]``, ``B_t, C_t: [N]`` (shared by the heads of one group), ``dt_t > 0`` (after softplus) and ``A_h < 0``.
All functions here share one signature (as fla's ``ops/<op>/{chunk,naive}.py`` do):

* :func:`ssd_chunk`: the chunked SSD form of the paper (Sec. 6 / Listing 1): a quadratic, attention-like product
  inside each chunk of ``chunk_size`` tokens plus a linear recurrence over the chunk-boundary states. Pure PyTorch,
  accumulates in fp32 (fp64 for fp64 inputs), any ``T`` (the tail chunk is zero-padded: ``dt = 0`` means no decay
  and no input, so padding changes neither outputs nor the final state).
* :func:`ssd_naive`: its twin, the per-token recurrence above (the reference the tests compare against).
* :func:`ssd_fla`: fla's ``chunk_simple_gla(q=C, k=B, v=x*dt, g=A*dt, scale=1)``, which is the same scan (Triton;
  CUDA, or CPU under ``TRITON_INTERPRET=1``).
* :func:`ssd_mamba`: mamba-ssm's fused Triton ``mamba_chunk_scan_combined`` (CUDA only).

Legend: B batch, T tokens, H heads, P head dim (mamba-ssm's ``headdim``), G groups of B/C (``ngroups``, divides H),
N state dim (``d_state``), Q chunk length, c number of chunks.

Optional libraries (fla, mamba-ssm) are imported lazily inside the functions that need them (through
:mod:`seqmix.ops.external`).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from seqmix.utils.triton_compat import patch_triton_interpreter

from . import acc_dtype
from .external import mamba_chunk_scan_combined
from .scan import chunk_scan, exporting, num_chunks

logger = logging.getLogger(__name__)

__all__ = [
    "ssd_chunk",
    "ssd_naive",
    "ssd_fla",
    "ssd_mamba",
]


# ------------------------------------------------------------------------------------------------------- helpers
def _check(x, dt, A, B, C, chunk_size, D, initial_state) -> tuple[int, int, int, int, int, int]:
    """Validate shapes; returns ``(b, T, H, P, G, N)``."""
    if x.dim() != 4:
        raise ValueError(f"ssd: x must be [B, T, H, P], got {tuple(x.shape)}")
    b, T, H, P = x.shape
    if dt.shape != (b, T, H):
        raise ValueError(f"ssd: dt must be [B, T, H] = {(b, T, H)}, got {tuple(dt.shape)}")
    if A.shape != (H,):
        raise ValueError(f"ssd: A must be [H] = {(H,)}, got {tuple(A.shape)}")
    if B.dim() != 4 or B.shape[:2] != (b, T) or B.shape != C.shape:
        raise ValueError(f"ssd: B and C must both be [B, T, G, N] with B, T = {b}, {T}; got {tuple(B.shape)}, "
                         f"{tuple(C.shape)}")
    G, N = B.shape[2], B.shape[3]
    if H % G:
        raise ValueError(f"ssd: number of heads H={H} must be divisible by the number of B/C groups G={G}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"ssd: chunk_size must be a positive int, got {chunk_size!r}")
    if D is not None and D.shape not in ((H,), (H, P)):
        raise ValueError(f"ssd: D must be [H] or [H, P] = {(H,)} or {(H, P)}, got {tuple(D.shape)}")
    if initial_state is not None and initial_state.shape != (b, H, P, N):
        raise ValueError(f"ssd: initial_state must be [B, H, P, N] = {(b, H, P, N)}, got {tuple(initial_state.shape)}")
    return b, T, H, P, G, N


def _heads(M: torch.Tensor, H: int) -> torch.Tensor:
    """[B, T, G, N] -> [B, T, H, N]: head h reads group h // (H / G), as in mamba-ssm's kernels."""
    G = M.shape[2]
    return M if G == H else M.repeat_interleave(H // G, dim=2)


def _skip(y: torch.Tensor, x: torch.Tensor, D: torch.Tensor | None) -> torch.Tensor:
    """``y + D x`` with ``D: [H]`` or ``[H, P]`` (computed in y's dtype)."""
    if D is None:
        return y
    D = D.to(y.dtype)
    return y + x.to(y.dtype) * (D[:, None] if D.dim() == 1 else D)


def _segsum(a: torch.Tensor) -> torch.Tensor:
    """``out[..., l, s] = sum_{s < r <= l} a[..., r]`` for ``s <= l``, ``-inf`` above the diagonal.

    a: [..., Q] -> [..., Q, Q]. Masked cumulative sums instead of ``cumsum[l] - cumsum[s]``: no cancellation between
    two large partial sums (mamba-ssm's ``segsum``), so ``exp`` of it is accurate even for long chunks.
    """
    Q = a.shape[-1]
    a = a[..., None].expand(*a.shape, Q)  # [..., r, s]
    strict = torch.tril(torch.ones(Q, Q, dtype=torch.bool, device=a.device), diagonal=-1)
    out = torch.cumsum(a.masked_fill(~strict, 0.0), dim=-2)
    causal = torch.tril(torch.ones(Q, Q, dtype=torch.bool, device=a.device), diagonal=0)
    return out.masked_fill(~causal, float("-inf"))


# --------------------------------------------------------------------------------------------------- torch forms
def ssd_chunk(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    chunk_size: int = 64,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked SSD scan in pure PyTorch (paper Sec. 6, Listing 1, plus initial state and ragged T).

    Args:
        x: [B, T, H, P] inputs. dt: [B, T, H] positive step sizes (softplus already applied). A: [H] negative decay
        rates. B, C: [B, T, G, N] input / output matrices. chunk_size: Q, tokens per chunk (any T works).
        D: [H] or [H, P] skip weights, or None. initial_state: [B, H, P, N] state before token 0, or None (zeros).
        output_final_state: also return the state after the last token.

    Returns:
        ``(y, final_state)``: y [B, T, H, P] in x's dtype; final_state [B, H, P, N] in fp32 (fp64 for fp64 inputs),
        or None when not requested.
    """
    b, T, H, P, G, N = _check(x, dt, A, B, C, chunk_size, D, initial_state)
    acc = acc_dtype(x)
    # a chunk longer than the input would only multiply zero padding (Q^2 work per chunk); exported, T may be symbolic
    Q = chunk_size if exporting() else min(chunk_size, T)
    xdt = x.to(acc) * dt.to(acc)[..., None]  # [B, T, H, P] discretised input dt x
    a = dt.to(acc) * A.to(acc)  # [B, T, H] log decay of each step (<= 0)
    Bh, Ch = _heads(B, H).to(acc), _heads(C, H).to(acc)  # [B, T, H, N]
    c = num_chunks(T, Q)
    pad = c * Q - T
    if exporting() or pad:  # dt = 0 on the padding: decay exp(0) = 1 and no input, so it changes nothing before it
        # (exported, T is symbolic: pad always)
        xdt, Bh, Ch = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (xdt, Bh, Ch))
        a = F.pad(a, (0, 0, 0, pad))
    xdt, Bh, Ch = (t.reshape(b, c, Q, H, t.shape[-1]) for t in (xdt, Bh, Ch))  # [B, c, Q, H, .] (explicit: B may be 0)
    a = a.reshape(b, c, Q, H).permute(0, 3, 1, 2)  # [B, H, c, Q]
    a_cs = torch.cumsum(a, dim=-1)  # [B, H, c, Q] log decay from the chunk start to each token

    # 1. Inside each chunk (diagonal blocks): masked "attention" y_l = sum_{s<=l} (C_l . B_s) exp(a_{s+1..l}) dt_s x_s.
    L = torch.exp(_segsum(a))  # [B, H, c, Q, Q]
    scores = torch.einsum("bclhn,bcshn->bhcls", Ch, Bh) * L
    y = torch.einsum("bhcls,bcshp->bclhp", scores, xdt)

    # 2. State each chunk's own inputs leave at its end (right factor of the low-rank off-diagonal blocks).
    decay_to_end = torch.exp(a_cs[..., -1:] - a_cs)  # [B, H, c, Q]
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bh, decay_to_end, xdt)  # [B, c, H, P, N]

    # 3. Recurrence over chunk boundaries: the state entering chunk i. A loop over c chunks (not the c x c segsum
    #    matrix of Listing 1) keeps the cost linear in T and carries the initial state naturally.
    chunk_decay = torch.exp(a_cs[..., -1])  # [B, H, c]
    h0 = x.new_zeros(b, H, P, N, dtype=acc) if initial_state is None else initial_state.to(acc)

    def step(carry, xs):
        (h,), (cd, cs) = carry, xs
        return (h * cd[..., None, None] + cs,), (h,)

    (h,), (states,) = chunk_scan(step, (h0,), (chunk_decay.movedim(2, 0), chunk_states.movedim(1, 0)))
    states = states.movedim(0, 1)  # [B, c, H, P, N]

    # 4. Entering state -> outputs (left factor of the off-diagonal blocks), decayed to each token.
    y = y + torch.einsum("bclhn,bchpn,bhcl->bclhp", Ch, states, torch.exp(a_cs))
    y = y.reshape(b, c * Q, H, P)[:, :T]
    y = _skip(y, x, D)
    return y.to(x.dtype), (h if output_final_state else None)


def ssd_naive(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    chunk_size: int = 64,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reference twin of :func:`ssd_chunk`: the per-token recurrence ``S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T``,
    ``y_t = S_t C_t + D x_t``. Same signature and dtypes (``chunk_size`` is validated and otherwise unused)."""
    b, T, H, P, G, N = _check(x, dt, A, B, C, chunk_size, D, initial_state)
    acc = acc_dtype(x)
    xdt = x.to(acc) * dt.to(acc)[..., None]  # [B, T, H, P]
    decay = torch.exp(dt.to(acc) * A.to(acc))  # [B, T, H]
    Bh, Ch = _heads(B, H).to(acc), _heads(C, H).to(acc)  # [B, T, H, N]
    h = x.new_zeros(b, H, P, N, dtype=acc) if initial_state is None else initial_state.to(acc)
    ys = []
    for t in range(T):
        h = h * decay[:, t, :, None, None] + xdt[:, t, :, :, None] * Bh[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", h, Ch[:, t]))
    y = _skip(torch.stack(ys, dim=1), x, D)
    return y.to(x.dtype), (h if output_final_state else None)


# ------------------------------------------------------------------------------------------------- fast paths
def ssd_fla(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    chunk_size: int = 64,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SSD through fla's ``chunk_simple_gla``: ``q = C, k = B, v = dt x, g = dt A`` (head-wise log decay),
    ``scale = 1``; the state layout ``[B, H, P, N]`` is fla's ``state_v_first`` ``[V, K]``.

    Same signature as :func:`ssd_chunk`. fla uses its own chunk length (64; it must be a power of two), so
    ``chunk_size`` is validated and otherwise unused (the result does not depend on it). Computes in x's dtype with
    fp32 decay and state; B/C groups are expanded to heads (fla has no groups). Runs on CUDA, or on CPU under
    ``TRITON_INTERPRET=1`` (tests), where :func:`patch_triton_interpreter` is applied first.
    """
    b, T, H, P, G, N = _check(x, dt, A, B, C, chunk_size, D, initial_state)
    if x.device.type == "cpu":
        patch_triton_interpreter()
    from fla.ops.simple_gla import chunk_simple_gla

    dtype = x.dtype
    v = (x.float() * dt.float()[..., None]).to(dtype)  # [B, T, H, P]
    g = dt.float() * A.float()  # [B, T, H] log decay, kept fp32
    h0 = None if initial_state is None else initial_state.float()
    o, ht = chunk_simple_gla(
        q=_heads(C, H).to(dtype), k=_heads(B, H).to(dtype), v=v, g=g, scale=1.0,
        initial_state=h0, output_final_state=output_final_state, state_v_first=True,
    )
    y = _skip(o.float(), x, D)
    return y.to(dtype), (ht if output_final_state else None)


def ssd_mamba(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    chunk_size: int = 256,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SSD through mamba-ssm's fused Triton ``mamba_chunk_scan_combined`` (CUDA). Same signature as
    :func:`ssd_chunk`; groups are handled natively; dt is passed already positive (``dt_softplus=False``)."""
    _check(x, dt, A, B, C, chunk_size, D, initial_state)
    scan = mamba_chunk_scan_combined()
    out = scan(
        x, dt.float(), A.float(), B.to(x.dtype), C.to(x.dtype), chunk_size,
        D=None if D is None else D.float(),
        initial_states=None if initial_state is None else initial_state.float(),
        return_final_states=output_final_state,
    )
    y, ht = out if output_final_state else (out, None)
    return y.to(x.dtype), ht
