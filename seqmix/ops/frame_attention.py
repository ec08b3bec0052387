"""Frame-local attention over frame-major video tokens: a dense reference, block-wise SDPA and FlexAttention.

Every backend has the signature ``fn(q, k, v, *, frame_tokens, window_frames, chunk_frames=None, q_frame0=0,
scale=None)`` and returns ``o [B, H, Tq, K]`` for ``q [B, H, Tq, K]``, ``k, v [B, H, Tk, K]``. Tokens come in whole
frames of ``frame_tokens`` (``H W``) tokens; the queries are the frames ``q_frame0 .. q_frame0 + Tq / frame_tokens - 1``
and the keys end with the same frames (a KV cache holds the ``(Tk - Tq) / frame_tokens`` frames before them).

Visibility of key frame ``j`` from query frame ``i`` (:func:`frame_visible`; k = ``window_frames`` >= 1):

* plain: ``i - k <= j <= i`` (the frame itself and the k frames before it; tokens of a frame see each other);
* chunked (``chunk_frames`` = c, needs ``c <= k``): frames in chunks ``[0, c), [c, 2c), ...``; every frame of a
  chunk sees the k frames ending with its chunk's last frame ``e``: ``e - k < j <= e``. The chunk is
  bidirectional, and with ``k = 2c`` (the paper's k = 10, c = 5) a chunk sees itself and the previous chunk.

Backends: :func:`frame_attention_naive` (dense ``[Tq, Tk]`` mask, the reference twin), :func:`frame_attention_sdpa`
(one unmasked SDPA call per query frame, or per chunk, on the key frames it sees: never a ``T x T`` mask; any
device and float dtype) and :func:`frame_attention_flex` (FlexAttention with a block mask; compiled on CUDA).

Legend: B batch, H heads, T tokens (Tq queries, Tk keys), K head dim.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

__all__ = ["frame_visible", "check_frames", "frame_attention_naive", "frame_attention_sdpa",
           "frame_attention_flex"]


def frame_visible(i, j, *, window_frames: int, chunk_frames: int | None = None):
    """Whether query frame ``i`` sees key frame ``j`` (ints or integer tensors, broadcast)."""
    if chunk_frames is None:
        return (j <= i) & (i - j <= window_frames)
    e = (i // chunk_frames + 1) * chunk_frames - 1  # last frame of i's chunk
    return (j <= e) & (e - j < window_frames)


def _key_span(i: int, *, window_frames: int, chunk_frames: int | None) -> tuple[int, int]:
    """``[lo, hi]`` (inclusive) frames visible from query frame ``i`` (before clipping to the frames present)."""
    if chunk_frames is None:
        return i - window_frames, i
    e = (i // chunk_frames + 1) * chunk_frames - 1
    return e - window_frames + 1, e


def check_frames(q, k, v, frame_tokens: int, window_frames: int, chunk_frames: int | None) -> tuple[int, int]:
    """Validate shapes and settings; returns ``(query frames, key frames)``."""
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4 or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"frame attention: expected q [B, H, Tq, K], k = v [B, H, Tk, K]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    Tq, Tk = q.shape[2], k.shape[2]
    if frame_tokens < 1 or Tq % frame_tokens or Tk % frame_tokens or Tk < Tq:
        raise ValueError(f"frame attention: Tq={Tq} and Tk={Tk} must be whole frames of {frame_tokens} tokens "
                         f"with Tk >= Tq")
    if window_frames < 1:
        raise ValueError(f"frame attention: window_frames must be >= 1, got {window_frames}")
    if chunk_frames is not None and not 1 <= chunk_frames <= window_frames:
        raise ValueError(f"frame attention: chunk_frames must be in [1, window_frames={window_frames}], "
                         f"got {chunk_frames}")
    return Tq // frame_tokens, Tk // frame_tokens


def _scale(q: torch.Tensor, scale: float | None) -> float:
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale


# ----------------------------------------------------------------------------------------------------- naive
def _dense_mask(q, k, frame_tokens: int, window_frames: int, chunk_frames: int | None, q_frame0: int) -> torch.Tensor:
    """The ``[Tq, Tk]`` frame visibility mask (True = attend) of queries ``q`` and keys ``k``."""
    Fq, Fk = q.shape[2] // frame_tokens, k.shape[2] // frame_tokens
    k_frame0 = q_frame0 - (Fk - Fq)
    fi = q_frame0 + torch.arange(q.shape[2], device=q.device) // frame_tokens
    fj = k_frame0 + torch.arange(k.shape[2], device=q.device) // frame_tokens
    return frame_visible(fi[:, None], fj[None, :], window_frames=window_frames, chunk_frames=chunk_frames)


def frame_attention_naive(q, k, v, *, frame_tokens: int, window_frames: int, chunk_frames: int | None = None,
                          q_frame0: int = 0, scale: float | None = None) -> torch.Tensor:
    """Reference: dense ``[Tq, Tk]`` frame mask, softmax in the input dtype."""
    check_frames(q, k, v, frame_tokens, window_frames, chunk_frames)
    mask = _dense_mask(q, k, frame_tokens, window_frames, chunk_frames, q_frame0)
    scores = torch.matmul(q, k.transpose(-1, -2)) * _scale(q, scale)
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(scores.softmax(dim=-1), v)


# ----------------------------------------------------------------------------------------------------- sdpa
def frame_attention_sdpa(q, k, v, *, frame_tokens: int, window_frames: int, chunk_frames: int | None = None,
                         q_frame0: int = 0, scale: float | None = None) -> torch.Tensor:
    """One unmasked SDPA call per query frame (per chunk when chunked: every frame of a chunk sees the same keys)
    on the contiguous key frames it sees. Memory O(T + window); ``ceil(Fq / c)`` (or ``Fq``) Python iterations."""
    Fq, Fk = check_frames(q, k, v, frame_tokens, window_frames, chunk_frames)
    if torch.compiler.is_exporting():
        # The per-frame loop below fixes the frame count, i.e. the length; an exported program keeps it symbolic
        # with one SDPA call under the dense frame mask (O(Tq Tk) memory, as the naive twin).
        mask = _dense_mask(q, k, frame_tokens, window_frames, chunk_frames, q_frame0)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=_scale(q, scale))
    ft, sc = frame_tokens, _scale(q, scale)
    k_frame0 = q_frame0 - (Fk - Fq)
    step = chunk_frames or 1
    outs = []
    f = q_frame0
    while f < q_frame0 + Fq:
        g_end = min((f // step + 1) * step, q_frame0 + Fq)  # query frames [f, g_end) share one key span
        lo, hi = _key_span(f, window_frames=window_frames, chunk_frames=chunk_frames)
        lo, hi = max(lo, k_frame0), min(hi, q_frame0 + Fq - 1)
        a, b = (lo - k_frame0) * ft, (hi - k_frame0 + 1) * ft
        qs = q[:, :, (f - q_frame0) * ft:(g_end - q_frame0) * ft]
        outs.append(F.scaled_dot_product_attention(qs, k[:, :, a:b], v[:, :, a:b], scale=sc))
        f = g_end
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


# ----------------------------------------------------------------------------------------------------- flex
@functools.lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    # Eager FlexAttention materialises the full score matrix; the compiled form is the fused kernel.
    return torch.compile(flex_attention, dynamic=False)


@functools.lru_cache(maxsize=16)
def _block_mask(Tq: int, Tk: int, ft: int, window: int, chunk: int | None, q_frame0: int, k_frame0: int,
                device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        return frame_visible(q_frame0 + q_idx // ft, k_frame0 + kv_idx // ft, window_frames=window,
                             chunk_frames=chunk)

    dev = torch.device(device)
    try:
        # Compiled mask construction avoids materialising the [Tq, Tk] mask at long sequence lengths.
        return create_block_mask(mask_mod, None, None, Tq, Tk, device=dev, _compile=dev.type == "cuda")
    except TypeError:  # a torch without the private `_compile` switch
        return create_block_mask(mask_mod, None, None, Tq, Tk, device=dev)


def frame_attention_flex(q, k, v, *, frame_tokens: int, window_frames: int, chunk_frames: int | None = None,
                         q_frame0: int = 0, scale: float | None = None, compiled: bool | None = None) -> torch.Tensor:
    """FlexAttention with a block mask from :func:`frame_visible` (blocks outside the window cost nothing).

    ``compiled``: ``torch.compile(flex_attention)`` (default: on CUDA). Eager flex runs the forward on CPU (unfused;
    tests only). The chunk phase only matters modulo the chunk: the mask cache keys on it."""
    from torch.nn.attention.flex_attention import flex_attention

    Fq, Fk = check_frames(q, k, v, frame_tokens, window_frames, chunk_frames)
    k_frame0 = q_frame0 - (Fk - Fq)
    # visibility depends on frame differences (and the chunk phase): shift both origins to keep the cache small
    shift = k_frame0 - k_frame0 % chunk_frames if chunk_frames else k_frame0
    block_mask = _block_mask(q.shape[2], k.shape[2], frame_tokens, window_frames, chunk_frames, q_frame0 - shift,
                             k_frame0 - shift, str(q.device))
    use_compiled = q.is_cuda if compiled is None else compiled
    fn = _compiled_flex() if use_compiled else flex_attention
    return fn(q, k, v, block_mask=block_mask, scale=_scale(q, scale))
