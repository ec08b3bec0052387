"""Attention mixers: sliding-window (``swa``), full (``full_attn``), block-local (``local_attn``) and the
no-global-layer baseline (``identity``).

These are the attention baselines of Dalal et al. 2025 (arXiv 2504.05298, "One-Minute Video Generation with
Test-Time Training"), used in the place of the global layer: sliding-window attention with an 8192-token window
(~1.5 s of video), full attention (the quadratic upper bound, ~11x slower than local attention at 63 s) and
"local attention only" (attention inside blocks; as a mixer, blocks of ``window`` tokens). ``identity`` is "no
global layer at all": it returns zeros, so a gated residual insertion of it is a no-op.

Layer (per head, H heads of width K = ``head_dim``, default ``dim // num_heads``):
own Q/K/V projections ``D -> H K`` (with bias); optional per-head LayerNorm of Q and K (``qk_norm``, as
CogVideoX); RoPE on Q and K when ``positions`` are passed (1D ``[T]``/``[B, T]`` or 3D ``[T, 3]``/``[B, T, 3]``,
see :mod:`seqmix.ops.rope`); masked softmax attention with scale ``1 / sqrt(K)`` (masks defined in
:mod:`seqmix.ops.attention`); output projection ``H K -> D`` (with bias).

Visibility of key position s from query position t (w = ``window``):

* ``swa``: causal ``t - w < s <= t`` (w keys, itself included); non-causal ``|s - t| < w`` (2w - 1 keys).
* ``local_attn``: same block ``s // w == t // w`` (blocks ``[0, w), [w, 2w), ...``), and ``s <= t`` if causal.
* ``full_attn``: every key (``s <= t`` if causal).

Parameters: ``4 D H K + 3 H K + D`` (+ ``4 K`` with ``qk_norm``); at the paper's D = 3072, H = 48, K = 64 that is
~37.8M per layer. State (KV cache, causal use): see each class's ``state_size``.

Backends (``backend=``): ``"flash_attn"`` (flash-attn, CUDA, fp16/bf16), ``"flex"`` (compiled FlexAttention,
CUDA), ``"sdpa"`` (block-wise ``F.scaled_dot_product_attention``, anywhere, fp64 included) and ``"naive"``
(dense masked reference). ``"auto"`` picks flash_attn > flex > sdpa on CUDA and sdpa on CPU. ``layer.backend`` is
the choice for the layer's device; a call whose dtype / head dim / KV cache the chosen fast path cannot take runs
the next backend instead, and ``layer.last_backend`` records what the last call used.

Legend: B batch, T tokens, D model dim, H heads, K head dim.

References (registry name, task form: public code; the test that equals it on the same weights in fp64):

- full_attn / swa / local_attn, lm: softmax attention as PyTorch's dense ``scaled_dot_product_attention`` math,
  causal or windowed by mask; tests/test_attention.py::test_sdpa_matches_naive_and_torch_dense. On MQAR, Zoology's
  attention (``MHA`` / ``SlidingAttn``: projections with bias, no RoPE - the MQAR recipes set the backbone's
  ``rope: false``; Zoology's ``block_size`` b is ``window`` b + 1 here);
  tests/test_mqar.py::test_mqar_attention_recipes_build_zoologys_attention
- full_attn / swa / local_attn, video: the same, in the DiT's window and span layouts;
  tests/test_attention.py::test_block_align_is_full_attention_inside_each_span
- identity, lm: no token mixing (the "no global layer" baseline);
  tests/test_attention.py::test_identity_returns_zeros_and_carries_trivial_state
"""

from __future__ import annotations

import abc

import logging
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import nn

from seqmix.ops import attention as attn_ops
from seqmix.ops import external
from seqmix.ops.rope import apply_rope, rope_angles

from .base import Backend, Mixer, MixerConfig, register
from .cost import Cost, attention_pairs
from .sharding import HeadShardSpec
from .spans import TokenSpans, aligned_bounds

logger = logging.getLogger(__name__)

__all__ = [
    "AttentionConfig",
    "KVCache",
    "SlidingWindowAttention",
    "FullAttention",
    "LocalAttention",
    "NoMixer",
]

MAX_WINDOW = 1 << 20  # 1,048,576 tokens: ~3x the paper's 63 s video (341,550 tokens); beyond it use full_attn.


class KVCache(NamedTuple):
    """Carried state of a causal attention layer between calls.

    ``k, v``: ``[B, H, n, K]`` keys (after RoPE / qk-norm) and values of the ``n`` most recent tokens that a
    future query can still see: the last ``window - 1`` tokens (swa), all tokens (full_attn), the tokens of the
    current unfinished block (local_attn). ``pos``: number of tokens seen so far, i.e. the absolute position of
    the next token (it aligns local_attn's blocks across calls).
    """

    k: torch.Tensor
    v: torch.Tensor
    pos: int
    layer: str = ""  # registry name of the producing layer (set by Mixer.forward; see seqmix.layers.base)


@dataclass(kw_only=True)
class AttentionConfig(MixerConfig):
    """Settings shared by the attention mixers.

    Attributes:
        causal: causal attention (keys ``s <= t`` only; enables KV-cache state carry) or the non-causal form
            (the video DiT's use).
        head_dim: per-head width K; default ``dim // num_heads``.
        qk_norm: per-head LayerNorm (eps 1e-6, with affine) on Q and K before RoPE, as CogVideoX's attention.
        rope_theta: RoPE base used when ``positions`` are passed to ``forward``.
        backend: ``"auto"``, ``"flash_attn"``, ``"flex"``, ``"sdpa"`` or ``"naive"`` (dense reference).
    """

    causal: bool = False
    head_dim: int | None = None
    qk_norm: bool = False
    rope_theta: float = 1e4


def _check_window(name: str, window) -> int:
    if not isinstance(window, int) or isinstance(window, bool):
        raise TypeError(f"{name}: window must be an int (tokens), got {type(window).__name__}")
    if window < 1:
        raise ValueError(f"{name}: window must be >= 1 token, got {window}")
    if window > MAX_WINDOW:
        raise ValueError(
            f"{name}: window must be <= 2**20 = {MAX_WINDOW} tokens, got {window}; for unbounded context use full_attn"
        )
    return window


def _device_reason(backend: str, device: torch.device) -> str | None:
    """Why ``backend`` cannot run on ``device`` at all (the library or the device), or ``None``."""
    if backend == "flash_attn":
        if device.type != "cuda":
            return f"flash-attn needs a CUDA device, got {device.type}"
        return external.flash_attn_unavailable()
    if backend == "flex":
        if device.type != "cuda":
            return f"FlexAttention needs a CUDA device for training (it has no backward on {device.type})"
        return external.flex_unavailable()
    return None


def _call_reason(backend: str, dtype: torch.dtype, shapes: dict | None) -> str | None:
    """Why ``backend`` cannot take a call in ``dtype`` with ``shapes`` (head dim, KV cache), or ``None``."""
    if backend == "flash_attn" and dtype not in (torch.float16, torch.bfloat16):
        return f"flash-attn needs fp16/bf16 inputs, got {dtype}"
    if backend == "flex" and dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"FlexAttention takes fp16/bf16/fp32, got {dtype}"
    if shapes is None:
        return None
    K = shapes["head_dim"]
    if backend == "flash_attn" and (K % 8 or K > 256):
        return f"flash-attn needs a head dim that is a multiple of 8 and <= 256, got {K}"
    if backend == "flex":
        if K < 16 or K & (K - 1):
            return f"FlexAttention needs a power-of-two head dim >= 16, got {K}"
        if shapes["cached"]:
            # Every new cache length would be a new compiled kernel; decode-sized calls are cheap in sdpa.
            return "calls with a carried KV cache run sdpa (flex would recompile per cache length)"
    return None


def _supports(backend: str):
    def supports(layer: "_Attention", device: torch.device, dtype: torch.dtype, shapes: dict | None) -> str | None:
        return _device_reason(backend, device) or _call_reason(backend, dtype, shapes)

    return supports


class _Attention(Mixer):
    """Multi-head attention with a visibility pattern ``kind`` (see :mod:`seqmix.ops.attention`)."""

    kind: ClassVar[str]
    # Every backend runs one signature (seqmix.ops.attention.attention_naive); the choice is made per call, since
    # dtype, head dim and a carried KV cache decide what a fast path can take.
    backend_table = (
        Backend("flash_attn", attn_ops.attention_flash, _supports("flash_attn")),
        Backend("flex", attn_ops.attention_flex, _supports("flex")),
        Backend("sdpa", attn_ops.attention_sdpa),
        Backend("naive", attn_ops.attention_naive, reference=True),
    )
    causal_modes = (False, True)
    takes_positions = True

    class Tooling(Mixer.Tooling):
        gates = ("tests/test_attention.py",)
        backend_gates = {"flash_attn": ("tests/test_attention.py::test_flash_attn_mapping_with_a_stand_in",),
                         "flex": ("tests/test_attention.py::test_flex_forward_on_cpu_matches_sdpa",)}
        param_knob = "head_dim"

    def __init__(self, dim: int, num_heads: int, config: AttentionConfig):
        super().__init__(dim, num_heads, config)
        c = config
        K = self.resolve_head_dim(c.head_dim)
        self.window: int | None = _check_window(self.name, c.window) if self.kind != "full" else None
        self.head_dim = K
        HK = num_heads * K
        self.wq = nn.Linear(dim, HK)
        self.wk = nn.Linear(dim, HK)
        self.wv = nn.Linear(dim, HK)
        self.wo = nn.Linear(HK, dim)
        self.q_norm = nn.LayerNorm(K, eps=1e-6) if c.qk_norm else None
        self.k_norm = nn.LayerNorm(K, eps=1e-6) if c.qk_norm else None
        self.last_backend: str | None = None  # backend of the most recent forward call (for inspection)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.wq, self.wk, self.wv, self.wo):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)
        for norm in (self.q_norm, self.k_norm):
            if norm is not None:
                norm.reset_parameters()

    def head_shard_spec(self) -> HeadShardSpec:
        """Heads are independent: Q/K/V split by heads (q/k norms per head, replicated), ``wo`` row parallel."""
        heads = {f"{n}.{p}": 0 for n in ("wq", "wk", "wv") for p in ("weight", "bias")}
        local = tuple(f"{n}.{p}" for n in ("q_norm", "k_norm") if getattr(self, n) is not None
                      for p in ("weight", "bias"))
        return HeadShardSpec(head_params=heads, head_local=local, rowwise=("wo",))

    def _pairs(self, n: int, ctx: int, layout: TokenSpans | None) -> int:
        """Visible (query, key) pairs of a call (``local_attn`` counts them inside the layout's spans)."""
        return attention_pairs(self.kind, self.window, self.causal, n, ctx)

    def _kv_elements(self, tokens: int) -> int:
        return 2 * self.num_heads * self.head_dim * tokens

    def core_cost(self, n: int, ctx: int, batch: int, elem: int, layout: TokenSpans | None = None) -> Cost:
        """``4 H K`` per visible (query, key) pair (``Q K^T`` and ``P V``), pairs counted exactly from the visibility
        rule (:func:`~seqmix.layers.cost.attention_pairs`; spans of the layout for ``local_attn`` with
        ``block_align``, estimated as blocks of ``window`` without it); bytes: q, k, v of the new tokens read, o
        written, the visible KV cache read."""
        H, K = self.num_heads, self.head_dim
        pairs = self._pairs(n, ctx, layout)
        flops = 4.0 * H * K * pairs * batch
        if ctx:
            cached = {"full": ctx, "swa": min(ctx, (self.window or 1) - 1), "local": ctx % (self.window or 1)}[self.kind]
        else:
            cached = 0
        nbytes = elem * batch * H * K * (4 * n + 2 * cached)
        return Cost(flops, nbytes, f"attention[{self.kind}]: 4 H K x visible pairs")

    def extra_repr(self) -> str:
        win = "" if self.window is None else f", window={self.window}"
        return f"{super().extra_repr()}, head_dim={self.head_dim}{win}"

    # ------------------------------------------------------------------------------------------------ forward
    def _angles(self, positions: torch.Tensor, T: int, device: torch.device) -> torch.Tensor:
        if not isinstance(positions, torch.Tensor):
            raise TypeError(f"{self.name}: positions must be an integer tensor, got {type(positions).__name__}")
        three_d = positions.dim() >= 2 and positions.shape[-1] == 3
        n = positions.shape[-2] if three_d else positions.shape[-1]
        if positions.dim() > (3 if three_d else 2) or n != T:
            raise ValueError(
                f"{self.name}: positions {tuple(positions.shape)} do not fit T={T}; "
                "expected [T], [B, T] (1D RoPE) or [T, 3], [B, T, 3] (3D RoPE)"
            )
        return rope_angles(positions.to(device), self.head_dim, self.config.rope_theta)

    def _qkv(self, x: torch.Tensor, positions: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """``x [B, T, D]`` -> ``q, k, v [B, H, T, K]``: projections (autocast applies), q/k norm, RoPE."""
        B, T, _ = x.shape
        q, k, v = (proj(x).view(B, T, self.num_heads, self.head_dim) for proj in (self.wq, self.wk, self.wv))
        if self.q_norm is not None:
            # LayerNorm runs in fp32 under autocast; attention needs q, k, v in one dtype.
            q, k = self.q_norm(q).to(v.dtype), self.k_norm(k).to(v.dtype)
        if positions is not None:
            ang = self._angles(positions, T, x.device)
            q, k = apply_rope(q, ang), apply_rope(k, ang)
        return tuple(t.transpose(1, 2) for t in (q, k, v))

    def _with_cache(self, k: torch.Tensor, v: torch.Tensor, state) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Keys and values ``[B, H, Tk, K]`` with the carried KV cache (checked) in front; and the absolute position
        of the first new token (0 without a state)."""
        if state is None:
            return k, v, 0
        cache = self._check_state(state, k.shape[0])
        k = torch.cat([cache.k.to(device=k.device, dtype=k.dtype), k], dim=2)
        v = torch.cat([cache.v.to(device=v.device, dtype=v.dtype), v], dim=2)
        return k, v, cache.pos

    def _span_bounds(self, layout, T: int, stateful: bool) -> tuple[int, ...] | None:
        """Boundaries of the spans attention stays inside when they come from ``layout`` (None: the kind's own
        visibility rule). Only ``local_attn`` (``takes_layout``) with ``block_align`` other than ``"tokens"`` takes
        them; the other kinds never get a layout (the base class refuses it)."""
        return None

    def _forward(self, x, *, layout, positions, state, return_state):
        bounds = self._span_bounds(layout, x.shape[1], state is not None or return_state)
        if return_state and not self.causal:
            raise ValueError(f"{self.name}: return_state needs causal=True (a KV cache is only defined causally)")
        B, T, _ = x.shape
        H, K = self.num_heads, self.head_dim
        q, k, v = self._qkv(x, positions)  # 1. projections, q/k norm, RoPE
        # 2. prepend the KV cache: queries are the last T of the keys, which start at absolute position k_start
        k, v, pos = self._with_cache(k, v, state)
        k_start = pos - (k.shape[2] - T)

        # 3. attention
        backend = self.select_backend(q.device, q.dtype, {"head_dim": K, "cached": state is not None})
        self.last_backend = backend.name
        extra = {"block_size": self.config.block_size} if backend.name == "sdpa" and self.kind == "swa" else {}
        if bounds is None:
            o = backend.fn(
                q, k, v, kind=self.kind, window=self.window, causal=self.causal, k_start=k_start, **extra
            )  # [B, H, T, K]
        else:  # full attention inside each span of the layout (a handful of spans: one call each)
            o = torch.cat([backend.fn(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], kind="full", window=None,
                                      causal=self.causal, k_start=0) for s, e in zip(bounds, bounds[1:])], dim=2)

        # 4. output projection
        y = self.wo(o.transpose(1, 2).reshape(B, T, H * K))
        new_state = self._next_state(k, v, pos + T) if return_state else None
        return y, new_state

    # ------------------------------------------------------------------------------------------------ state
    @abc.abstractmethod
    def _keep(self, total: int, pos: int) -> int:
        """How many of the ``total`` most recent keys a query after ``pos`` tokens can still see."""

    def _next_state(self, k: torch.Tensor, v: torch.Tensor, pos: int) -> KVCache:
        Tk = k.shape[2]
        n = self._keep(Tk, pos)
        if n == Tk:
            return KVCache(k, v, pos)
        # clone: a slice would keep the whole concatenated [cache + chunk] tensor alive
        return KVCache(k[:, :, Tk - n :].clone(), v[:, :, Tk - n :].clone(), pos)

    def _check_state(self, state, B: int) -> KVCache:
        if not isinstance(state, KVCache):
            raise TypeError(
                f"{self.name}: state must be the KVCache returned with return_state=True, got {type(state).__name__}"
            )
        H, K = self.num_heads, self.head_dim
        k, v, pos = state.k, state.v, state.pos
        if k.dim() != 4 or k.shape[0] != B or k.shape[1] != H or k.shape[3] != K or v.shape != k.shape:
            raise ValueError(
                f"{self.name}: carried KV cache k {tuple(k.shape)}, v {tuple(v.shape)} does not fit "
                f"[B={B}, H={H}, n, K={K}]"
            )
        n = k.shape[2]
        # The cache after `pos` tokens always holds what _keep gives when all `pos` tokens were available.
        if not isinstance(pos, int) or isinstance(pos, bool) or pos < n or self._keep(pos, pos) != n:
            raise ValueError(f"{self.name}: carried KV cache of {n} tokens is inconsistent with position {pos}")
        return state


@register("swa")
class SlidingWindowAttention(_Attention):
    """Sliding-window attention: causal ``t - w < s <= t``; non-causal (default) ``|s - t| < w``.

    The paper's SWA baseline uses an 8192-token window (~1.5 s of video). State (causal): a KV cache of the last
    ``window - 1`` tokens is carried between calls; ``state_size(seq_len) = 2 H K min(seq_len, window)`` counts
    the keys/values the newest query attends to (the carried ``window - 1`` plus its own).
    """

    kind = "swa"

    class Tooling(_Attention.Tooling):
        state_knob = "window"
        # window >= 10: the bidirectional contract check (causal form, T=10) needs token 0 to see token 9
        small_config = {"window": 10}
        # Windows scaled to the CPU benchmark's lengths (<= 16k): the paper's 8192 tokens would cover most of the
        # sequence there and hide the linear growth.
        bench_config = {"window": 1024}
        bench_quick_config = {"window": 32}
        paper_token_window = "window"  # 8192 tokens, ~6 latent frames of the paper's videos
        kernel_test_config = {"window": 24}
        sweep_knobs = {"window": (8, 32)}

    @dataclass(kw_only=True)
    class Config(AttentionConfig):
        """Sliding-window settings; see :class:`AttentionConfig`.

        Attributes:
            window: w, keys seen on each side of a query, itself included (causal: w keys; non-causal: 2w - 1).
                1 <= w <= 2**20. Paper: 8192 tokens (~1.5 s of video).
            block_size: query-block size of the block-wise "sdpa" backend; ``None`` = the window clamped to
                [128, 1024] (see :func:`seqmix.ops.attention.default_block_size`). Affects speed/memory only.
        """

        window: int = 8192
        block_size: int | None = None

    def __init__(self, dim: int, num_heads: int, config: AttentionConfig):
        bs = config.block_size
        if bs is not None and (not isinstance(bs, int) or isinstance(bs, bool) or bs < 1):
            raise ValueError(f"swa: block_size must be None or an int >= 1, got {bs!r}")
        super().__init__(dim, num_heads, config)

    def state_size(self, seq_len: int | None = None) -> int:
        n = self.window if seq_len is None else min(_check_seq_len(self.name, seq_len), self.window)
        return self._kv_elements(n)

    def _keep(self, total: int, pos: int) -> int:
        return min(total, self.window - 1)


@register("full_attn")
class FullAttention(_Attention):
    """Full attention (the quadratic upper bound): every query sees every key (``s <= t`` when causal).

    State (causal): the KV cache of all tokens; ``state_size(seq_len) = 2 H K seq_len`` (``seq_len`` required).
    """

    kind = "full"

    class Tooling(_Attention.Tooling):
        state_knob = "head_dim"

    @dataclass(kw_only=True)
    class Config(AttentionConfig):
        """Full-attention settings; see :class:`AttentionConfig`."""

    def state_size(self, seq_len: int | None = None) -> int:
        if seq_len is None:
            raise ValueError("full_attn: the KV cache grows with the sequence; pass state_size(seq_len=...)")
        return self._kv_elements(_check_seq_len(self.name, seq_len))

    def _keep(self, total: int, pos: int) -> int:
        return total


@register("local_attn")
class LocalAttention(_Attention):
    """Block-local attention: tokens attend only inside their block ``[i w, (i + 1) w)`` (causal option inside).

    The paper's "local attention only" baseline as a mixer (its attention is full inside 3 s segments of
    ~18k tokens: 13 latent frames x 1350 + text). Sequence lengths need not be a multiple of the block.
    State (causal): the tokens of the current unfinished block (and the absolute position, so that blocks align
    across calls); ``state_size(seq_len) = 2 H K min(seq_len, window)`` (the most the cache holds).

    ``block_align="frame"`` / ``"segment"``: the blocks are the frames / segments of the sequence, read from the
    :class:`~seqmix.layers.spans.TokenSpans` a backbone passes as ``layout`` (the DiT does; its segments are 13 or
    12 frames plus a text slot, not a fixed token count), so the layer stays segment-local at any video scale.
    Such calls take the whole sequence (no carried state) and ``window`` is unused.
    """

    kind = "local"
    takes_layout = True

    class Tooling(_Attention.Tooling):
        state_knob = "window"
        small_config = {"window": 16}
        bench_config = {"window": 2048}  # scaled to the CPU benchmark's lengths, as SWA's
        bench_quick_config = {"window": 64}
        kernel_test_config = {"window": 32}
        dit_config = {"block_align": "segment"}  # the paper's segment-local attention at any DiT scale

    @dataclass(kw_only=True)
    class Config(AttentionConfig):
        """Block-local settings; see :class:`AttentionConfig`.

        Attributes:
            window: block size w in tokens, 1 <= w <= 2**20. Default 18048, one 3 s segment of the paper's
                video DiT (its 3 s training context).
            block_align: ``"tokens"`` (blocks of ``window`` tokens), ``"frame"`` or ``"segment"`` (the layout's
                frames / segments; every call then needs ``layout=TokenSpans(...)`` and the whole sequence).
        """

        window: int = 18048
        block_align: str = "tokens"

    def __init__(self, dim: int, num_heads: int, config: "LocalAttention.Config"):
        if config.block_align not in ("tokens",) + TokenSpans.UNITS:
            raise ValueError(f"local_attn: block_align must be one of tokens, {', '.join(TokenSpans.UNITS)}; "
                             f"got {config.block_align!r}")
        super().__init__(dim, num_heads, config)

    def _span_bounds(self, layout, T: int, stateful: bool) -> tuple[int, ...] | None:
        align = self.config.block_align
        bounds = aligned_bounds(self.name, layout, align, T, knob="block_align", what="blocks", fallback="a window")
        if bounds is not None and stateful:
            raise ValueError(f"{self.name}: block_align={align!r} attends inside the layout's spans of one whole "
                             "call; carried state (state / return_state) needs block_align='tokens'")
        return bounds

    def _pairs(self, n: int, ctx: int, layout: TokenSpans | None) -> int:
        if self.config.block_align == "tokens" or layout is None:
            return super()._pairs(n, ctx, layout)
        b = layout.bounds(self.config.block_align)
        return sum(attention_pairs("full", None, self.causal, e - s) for s, e in zip(b, b[1:]))

    def extra_repr(self) -> str:
        align = self.config.block_align
        return super().extra_repr() if align == "tokens" else f"{super().extra_repr()}, block_align={align}"

    def state_size(self, seq_len: int | None = None) -> int:
        n = self.window if seq_len is None else min(_check_seq_len(self.name, seq_len), self.window)
        return self._kv_elements(n)

    def _keep(self, total: int, pos: int) -> int:
        return pos % self.window


def _check_seq_len(name: str, seq_len) -> int:
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 0:
        raise ValueError(f"{name}: seq_len must be an int >= 0, got {seq_len!r}")
    return seq_len


@register("identity")
class NoMixer(Mixer):
    """No global layer: ``x [B, T, D] -> zeros [B, T, D]`` (so ``x + gate * layer(x)`` is ``x``).

    Not ``nn.Identity``: it returns zeros, which is what a mixer that "mixes nothing" contributes to a gated
    residual. Zero parameters, ``state_size() == 0``, causal by construction; carrying state is trivial (the
    state is ``None``). ``layout`` and ``positions`` are accepted and ignored, so it drops in for any mixer.
    The output stays attached to the autograd graph (gradient zero), so training code that calls
    ``backward()`` through it works unchanged.
    """

    causal_modes = (True,)
    mixes_tokens = False

    class Tooling(Mixer.Tooling):
        gates = ("tests/test_attention.py::test_identity_returns_zeros_and_carries_trivial_state",)

    @dataclass(kw_only=True)
    class Config(MixerConfig):
        """No settings besides ``backend`` (``"auto"`` or ``"torch"``)."""

    def __init__(self, dim: int, num_heads: int, config: MixerConfig):
        super().__init__(dim, num_heads, config)
        # Zero-size buffer that follows .to(dtype): it lets a parameterless layer reject mismatched input dtypes
        # as the others do (base.check_input looks at parameters only). Not saved in state_dict.
        self.register_buffer("_dtype_anchor", torch.empty(0), persistent=False)

    def state_size(self, seq_len: int | None = None) -> int:
        return 0

    def core_cost(self, n: int, ctx: int, batch: int, elem: int) -> Cost:
        return Cost(0.0, 0.0, "identity: no core (its traffic is the layer's input read and output written)")

    def check_input(self, x: torch.Tensor) -> None:
        super().check_input(x)
        want = self._dtype_anchor.dtype
        if x.dtype != want and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(
                f"{self.name}: input dtype {x.dtype} does not match layer dtype {want}; "
                "cast the layer (layer.to(dtype)) or run under torch.autocast"
            )

    def _forward(self, x, *, layout, positions, state, return_state):
        if state is not None:
            raise TypeError(
                f"{self.name}: carries no state; pass back the None it returned, got {type(state).__name__}"
            )
        # masked_fill keeps exact zeros even for inf/nan inputs while staying differentiable w.r.t. x.
        y = x.masked_fill(torch.ones((), dtype=torch.bool, device=x.device), 0.0)
        if torch.is_autocast_enabled(x.device.type):  # as every other mixer, whose output projection autocasts
            y = y.to(torch.get_autocast_dtype(x.device.type))
        return y, None
