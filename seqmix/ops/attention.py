"""Masked softmax attention for the attention mixer family: sliding-window, block-local and full attention.

Every backend function has the same signature ``fn(q, k, v, *, kind, window, causal, scale=None, k_start=0)``
and returns ``o [B, H, Tq, K]`` for ``q [B, H, Tq, K]`` and ``k, v [B, H, Tk, K]`` (``Tq <= Tk``):

* :func:`attention_naive`  dense ``[Tq, Tk]`` boolean mask, softmax in the input dtype (the reference twin).
* :func:`attention_sdpa`   ``F.scaled_dot_product_attention`` block by block: each block of queries sees only the
  key range it can reach, with a small per-block mask (never a dense ``T x T`` mask for windowed / local
  attention); runs anywhere, any float dtype (fp64 included).
* :func:`attention_flex`   FlexAttention with a block mask (compiled on CUDA; eager forward elsewhere, tests only).
* :func:`attention_flash`  flash-attn's ``flash_attn_func`` (CUDA, fp16/bf16; imported lazily).

:mod:`seqmix.layers.attention` holds the backend records that choose between them.

Positions. The queries are the LAST ``Tq`` of the ``Tk`` key positions (a KV cache holds the ``Tk - Tq``
earlier ones); key ``j`` has absolute position ``k_start + j``, so query ``i`` has ``t = k_start + Tk - Tq + i``.
Query ``t`` may attend key ``s`` when (see :func:`visible`):

* ``kind="swa"`` (sliding window of ``window`` = w tokens): causal ``t - w < s <= t`` (w keys, itself
  included); non-causal (symmetric) ``|s - t| < w`` (2w - 1 keys). ``window=1`` attends only to itself.
* ``kind="local"`` (block-local): ``s // w == t // w`` (non-overlapping blocks ``[0, w), [w, 2w), ...`` of
  absolute positions), and ``s <= t`` when causal. Only this kind depends on ``k_start``.
* ``kind="full"``: every key, and ``s <= t`` when causal; ``window`` is ignored.

Legend: B batch, H heads, T tokens (Tq queries, Tk keys), K head dim, w window.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Callable

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

__all__ = [
    "KINDS",
    "visible",
    "visibility_mask",
    "default_block_size",
    "attention_naive",
    "attention_sdpa",
    "attention_flex",
    "attention_flash",
]

KINDS = ("swa", "local", "full")

# Query-block size bounds of the block-wise SDPA path for sliding windows. Blocks of about one window keep the
# per-block key range near 2w (causal) / 3w (symmetric); the lower bound stops tiny windows from turning into
# one Python iteration (and one SDPA launch) per token, the upper bound caps the per-block mask and score
# memory for very wide windows (the paper's 8192-token window).
_MIN_BLOCK, _MAX_BLOCK = 128, 1024


# ---------------------------------------------------------------------------------------------------- masks
def visible(t: torch.Tensor, s: torch.Tensor, *, kind: str, window: int | None, causal: bool) -> torch.Tensor:
    """Whether query at absolute position ``t`` may attend key at absolute position ``s`` (broadcasting)."""
    if kind == "full":
        return s <= t if causal else torch.ones(torch.broadcast_shapes(t.shape, s.shape), dtype=torch.bool,
                                                device=t.device)
    if kind == "swa":
        if causal:
            return (s <= t) & (t - s < window)
        return (t - s < window) & (s - t < window)
    if kind == "local":
        same = torch.div(s, window, rounding_mode="floor") == torch.div(t, window, rounding_mode="floor")
        return same & (s <= t) if causal else same
    raise ValueError(f"unknown attention kind {kind!r}; valid: {', '.join(KINDS)}")


def visibility_mask(
    kind: str, window: int | None, causal: bool, Tq: int, Tk: int, k_start: int = 0, device=None
) -> torch.Tensor:
    """Dense boolean mask ``[Tq, Tk]`` (True = attend) for queries at the last ``Tq`` of ``Tk`` key positions."""
    s = torch.arange(k_start, k_start + Tk, device=device)
    t = s[Tk - Tq :]
    return visible(t[:, None], s[None, :], kind=kind, window=window, causal=causal)


def default_block_size(window: int) -> int:
    """Query-block size of the block-wise SDPA sliding window: the window, clamped to [128, 1024]."""
    return min(max(window, _MIN_BLOCK), _MAX_BLOCK)


def _check(q, k, v, kind, window, causal, k_start) -> tuple[int, int]:
    if kind not in KINDS:
        raise ValueError(f"unknown attention kind {kind!r}; valid: {', '.join(KINDS)}")
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"attention expects q, k, v of shape [B, H, T, K]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not fit: expected q [B, H, Tq, K] and "
            "k, v [B, H, Tk, K]"
        )
    Tq, Tk = q.shape[2], k.shape[2]
    if Tq > Tk:
        raise ValueError(f"more queries ({Tq}) than keys ({Tk}): queries must be the last Tq key positions")
    if not causal and Tq != Tk:
        raise ValueError(f"non-causal attention needs as many queries as keys (no KV cache); got Tq={Tq}, Tk={Tk}")
    if kind != "full" and (not isinstance(window, int) or isinstance(window, bool) or window < 1):
        raise ValueError(f"{kind} attention needs an int window >= 1, got {window!r}")
    # a SymInt under torch.export / torch.compile with a dynamic length (k_start is derived from the shapes)
    if not isinstance(k_start, (int, torch.SymInt)) or isinstance(k_start, bool) or k_start < 0:
        raise ValueError(f"k_start must be an int >= 0, got {k_start!r}")
    return Tq, Tk


def _scale(q: torch.Tensor, scale: float | None) -> float:
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)


def _covers_all(kind: str, window: int | None, causal: bool, Tk: int) -> bool:
    """True when a sliding window is at least as wide as the keys: it is then plain (causal) full attention."""
    return kind == "swa" and window >= Tk


# ---------------------------------------------------------------------------------------------------- naive
def attention_naive(q, k, v, *, kind: str, window: int | None = None, causal: bool = False,
                    scale: float | None = None, k_start: int = 0) -> torch.Tensor:
    """Reference: explicit ``[Tq, Tk]`` mask, scores and softmax in the input dtype. O(Tq Tk) memory."""
    Tq, Tk = _check(q, k, v, kind, window, causal, k_start)
    mask = visibility_mask(kind, window, causal, Tq, Tk, k_start, device=q.device)  # [Tq, Tk]
    scores = torch.matmul(q, k.transpose(-1, -2)) * _scale(q, scale)  # [B, H, Tq, Tk]
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(scores.softmax(dim=-1), v)


# ----------------------------------------------------------------------------------------- shared building blocks
def _sdpa_core(q, k, v, causal: bool, scale: float) -> torch.Tensor:
    """Attention where every query sees every key (``causal``: bottom-right aligned, query i <-> key Tk-Tq+i)."""
    Tq, Tk = q.shape[-2], k.shape[-2]
    if not causal:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    if Tq == Tk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    # SDPA's is_causal is top-left aligned; with a KV cache the queries are the last Tq keys. CausalBias keeps
    # the mask implicit (no Tq x Tk tensor) on the fused CUDA kernels.
    from torch.nn.attention.bias import causal_lower_right

    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(Tq, Tk), scale=scale)


def _local_blocks(q, k, v, *, window: int, causal: bool, k_start: int,
                  core: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, bool], torch.Tensor]) -> torch.Tensor:
    """Block-local attention from calls of ``core(q, k, v, causal)`` on spans lying inside one block.

    ``core`` attends every query to every key it is given (bottom-right causal when ``causal``). The query range
    splits into a partial head block (queries that start mid-block, e.g. after a KV cache), the whole blocks in
    the middle (folded into the batch dimension: one call, no mask) and a partial tail block.
    """
    B, H, Tq, K = q.shape
    Tk, w = k.shape[2], window
    P0, P1 = k_start + Tk - Tq, k_start + Tk  # absolute query range [P0, P1)
    first = -(-P0 // w) * w  # first block boundary >= P0
    last = P1 // w * w  # last block boundary <= P1
    spans = []
    if first >= P1:
        spans.append(("part", P0, P1))
    else:
        if P0 < first:
            spans.append(("part", P0, first))
        if last > first:
            spans.append(("whole", first, last))
        if P1 > last:
            spans.append(("part", last, P1))
    outs = []
    for what, a, b in spans:
        qs = q[:, :, a - P0 : b - P0]
        if what == "part":
            ka = max(a // w * w, k_start)  # the keys of this block that exist (cache + new)
            outs.append(core(qs, k[:, :, ka - k_start : b - k_start], v[:, :, ka - k_start : b - k_start], causal))
        else:
            n = (b - a) // w
            fold = lambda t: t.reshape(B, H, n, w, K).transpose(1, 2).reshape(B * n, H, w, K)  # noqa: E731
            ks, vs = (t[:, :, a - k_start : b - k_start] for t in (k, v))
            o = core(fold(qs), fold(ks), fold(vs), causal)  # [B n, H, w, K]
            outs.append(o.reshape(B, n, H, w, K).transpose(1, 2).reshape(B, H, n * w, K))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


# ----------------------------------------------------------------------------------------------------- sdpa
def attention_sdpa(q, k, v, *, kind: str, window: int | None = None, causal: bool = False,
                   scale: float | None = None, k_start: int = 0, block_size: int | None = None) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` without dense masks: block-wise for windowed / local attention.

    * full: one SDPA call (``is_causal``, or a bottom-right causal bias when a KV cache precedes the queries).
    * local: whole blocks folded into the batch (no mask); partial first/last blocks as separate small calls.
    * swa: queries in blocks of ``block_size`` (default :func:`default_block_size`); each block attends to the
      key range ``[start - w + 1, end + w - 1)`` it can reach (``end`` when causal) with a ``[block, range]``
      boolean mask, so memory is O(T (block + 2w)) and the Python loop has ``ceil(Tq / block)`` iterations.
    """
    Tq, Tk = _check(q, k, v, kind, window, causal, k_start)
    sc = _scale(q, scale)
    core = functools.partial(_sdpa_core, scale=sc)
    if kind != "full" and torch.compiler.is_exporting():
        # The block loops below fix the number of blocks, i.e. the length; an exported program keeps the length
        # symbolic with one SDPA call under the [Tq, Tk] visibility mask (O(Tq Tk) memory, as the naive path).
        mask = visibility_mask(kind, window, causal, Tq, Tk, k_start, device=q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=sc)
    if kind == "full" or _covers_all(kind, window, causal, Tk):
        return core(q, k, v, causal)
    if kind == "local":
        return _local_blocks(q, k, v, window=window, causal=causal, k_start=k_start, core=core)
    bs = default_block_size(window) if block_size is None else block_size
    if not isinstance(bs, int) or bs < 1:
        raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
    off, w = Tk - Tq, window
    outs = []
    for a in range(0, Tq, bs):
        b = min(a + bs, Tq)
        lo = max(0, off + a - (w - 1))
        hi = min(Tk, off + b + (0 if causal else w - 1))
        t = torch.arange(off + a, off + b, device=q.device)
        s = torch.arange(lo, hi, device=q.device)
        mask = visible(t[:, None], s[None, :], kind=kind, window=w, causal=causal)  # [b - a, hi - lo]
        outs.append(F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, lo:hi], v[:, :, lo:hi],
                                                   attn_mask=mask, scale=sc))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


# ----------------------------------------------------------------------------------------------------- flex
@functools.lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    # Eager FlexAttention materialises the full score matrix; the compiled form is the fused kernel. Dynamic shapes:
    # one graph for every sequence length (after the one-block case), never the recompile limit's eager fallback.
    return torch.compile(flex_attention, dynamic=True)


def _mask_mod(kind: str, window: int | None, causal: bool, off: int, k_start: int, device=None):
    """FlexAttention mask_mod over (query, key) indices; ``None`` when nothing is masked.

    The offsets are captured as 0-dim tensors, not ints: compiled flex guards on an int in a closure, so every new
    offset (chunked inference, a cache that grows) would compile again, up to the recompile limit and then fall
    back to eager T x T scores; tensors are graph inputs. The window stays an int (fixed per layer)."""
    w = window
    off = torch.tensor(off, device=device)
    k_start = torch.tensor(k_start, device=device)
    if kind == "full":
        if not causal:
            return None

        def full_causal(b, h, q_idx, kv_idx):
            return kv_idx <= q_idx + off

        return full_causal
    if kind == "swa":
        if causal:

            def swa_causal(b, h, q_idx, kv_idx):
                t = q_idx + off
                return (kv_idx <= t) & (t - kv_idx < w)

            return swa_causal

        def swa_symmetric(b, h, q_idx, kv_idx):
            t = q_idx + off
            return (t - kv_idx < w) & (kv_idx - t < w)

        return swa_symmetric

    def local(b, h, q_idx, kv_idx):
        t, s = q_idx + off + k_start, kv_idx + k_start
        same = (t // w) == (s // w)
        return same & (s <= t) if causal else same

    return local


@functools.lru_cache(maxsize=16)
def _block_mask(kind, window, causal, Tq, Tk, off, k_start_mod, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    mm = _mask_mod(kind, window, causal, off, k_start_mod, device)
    if mm is None:
        return None
    dev = torch.device(device)
    try:
        # Compiled mask construction avoids materialising the [Tq, Tk] mask at long sequence lengths.
        return create_block_mask(mm, None, None, Tq, Tk, device=dev, _compile=dev.type == "cuda")
    except TypeError:  # a torch without the private `_compile` switch
        return create_block_mask(mm, None, None, Tq, Tk, device=dev)


def attention_flex(q, k, v, *, kind: str, window: int | None = None, causal: bool = False,
                   scale: float | None = None, k_start: int = 0, compiled: bool | None = None) -> torch.Tensor:
    """FlexAttention with a block mask built from :func:`visible` (block-sparse: skipped blocks cost nothing).

    ``compiled``: use ``torch.compile(flex_attention)`` (default: on CUDA). Eager flex runs the forward on CPU
    (unfused; tests only); FlexAttention has no CPU backward.
    """
    from torch.nn.attention.flex_attention import flex_attention

    Tq, Tk = _check(q, k, v, kind, window, causal, k_start)
    if _covers_all(kind, window, causal, Tk):
        kind = "full"
    # Local blocks only depend on k_start modulo the window: keep the block-mask cache small.
    k_start_mod = k_start % window if kind == "local" else 0
    block_mask = _block_mask(kind, window if kind != "full" else None, causal, Tq, Tk, Tk - Tq, k_start_mod,
                             str(q.device))
    use_compiled = q.is_cuda if compiled is None else compiled
    fn = _compiled_flex() if use_compiled else flex_attention
    return fn(q, k, v, block_mask=block_mask, scale=_scale(q, scale))


# ---------------------------------------------------------------------------------------------------- flash
def _flash_core(q, k, v, causal: bool, scale: float, window_size=(-1, -1)) -> torch.Tensor:
    from flash_attn import flash_attn_func

    # flash-attn takes [B, T, H, K]; its causal mask is bottom-right aligned when Tq < Tk, as the KV cache needs.
    o = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=scale,
                        causal=causal, window_size=window_size)
    return o.transpose(1, 2)


def attention_flash(q, k, v, *, kind: str, window: int | None = None, causal: bool = False,
                    scale: float | None = None, k_start: int = 0) -> torch.Tensor:
    """flash-attn (CUDA, fp16/bf16, head dim a multiple of 8 up to 256).

    Sliding windows map to ``window_size=(w - 1, 0 if causal else w - 1)`` (flash-attn's window is inclusive
    of both ends); block-local attention reuses the block decomposition of the SDPA path.
    """
    Tq, Tk = _check(q, k, v, kind, window, causal, k_start)
    sc = _scale(q, scale)
    if kind == "local":
        core = functools.partial(_flash_core, scale=sc)
        return _local_blocks(q, k, v, window=window, causal=causal, k_start=k_start, core=core)
    if kind == "full" or _covers_all(kind, window, causal, Tk):
        return _flash_core(q, k, v, causal, sc)
    return _flash_core(q, k, v, causal, sc, window_size=(window - 1, 0 if causal else window - 1))
