"""Frame-local attention (``frame_local_attn``) over frame-major video latents.

Po et al. 2025, "Long-Context State-Space Video World Models" (arXiv 2505.20171): after every block-wise SSM scan,
a token of frame ``i`` attends to every token of frames ``j`` with ``i - k <= j <= i``; in practice ``k = 10`` with
frames grouped in chunks of 5, bidirectional inside a chunk plus the previous chunk (FlexAttention). The SSM keeps
long-range memory, this layer local fidelity, both at constant per-frame cost.

Input ``x: [B, F*H*W, D]``, frame-major (all tokens of frame 0 in raster order, then frame 1, ...); ``grid=(H, W)``
from the config (``T`` must be a multiple of ``H W``). Visibility (k = ``window_frames`` >= 1, see
:mod:`seqmix.ops.frame_attention`):

* ``chunk_frames=None``: frame ``i`` sees frames ``max(0, i - k) .. i`` (k + 1 frames; tokens of a frame see each
  other). Frame-causal: a call may hold any whole number of frames.
* ``chunk_frames=c`` (``1 <= c <= k``): frames in chunks of c; every frame of a chunk sees the k frames ending with
  the chunk's last frame (``k = 2c``: itself and the previous chunk; the paper's ``window_frames=10,
  chunk_frames=5``). Chunk-causal: outputs of a chunk never depend on later chunks; with carried state every call
  but the last must end on a chunk boundary (a call continuing after a partial chunk raises).

Layer: the attention mixers' projections (:class:`~seqmix.layers.attention._Attention`: own Q/K/V/O with bias,
optional per-head ``qk_norm``, RoPE on Q and K when ``positions`` are passed, scale ``1 / sqrt(K)``).
Parameters ``4 D H K + 3 H K + D`` (+ ``4 K`` with ``qk_norm``). State (always causal): a
:class:`~seqmix.layers.attention.KVCache` of the last ``k`` frames (chunked: ``k - c``), ``pos`` in tokens;
``state_size(seq_len) = 2 H K min(seq_len, V H W)`` with V the frames the newest query sees (k + 1; chunked: k).

Backends: ``"flex"`` (compiled FlexAttention block mask, CUDA; calls with a KV cache run sdpa), ``"sdpa"``
(one unmasked SDPA call per query frame or chunk on its visible key frames: never a ``T x T`` mask; any device,
fp64 included) and ``"naive"`` (dense frame mask, the reference).

Legend: B batch, F frames, H x W grid, D model dim, H heads, K head dim, k window frames, c chunk frames.

References (registry name, task form: public code; the test that equals it on the same weights in fp64):

- frame_local_attn, worldmodel: the world model's frame-local attention (Po et al. 2025): dense softmax attention
  under its frame visibility mask; tests/test_worldmodel_layers.py::test_frame_attention_is_dense_sdpa_with_a_frame_mask
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from seqmix.ops import frame_attention as frame_ops

from ._frames import check_pair, num_frames
from .attention import AttentionConfig, KVCache, _Attention, _supports
from .base import Backend, register
from .cost import Cost

__all__ = ["FrameLocalAttention"]


@register("frame_local_attn")
class FrameLocalAttention(_Attention):
    """Frame-local (optionally chunked) attention over ``grid`` frames; see the module docstring."""

    kind = "full"  # no token window: the frame window lives in this class (the base class's window stays None)
    backend_table = (
        Backend("flex", frame_ops.frame_attention_flex, _supports("flex")),
        Backend("sdpa", frame_ops.frame_attention_sdpa),
        Backend("naive", frame_ops.frame_attention_naive, reference=True),
    )
    causal_modes = (True,)  # frame- (chunk-) causal by construction
    frame_input = True
    # window_frames=9: the bidirectional contract check (10 frames) needs frame 0 to see frame 9 through the
    # reversed pass

    class Tooling(_Attention.Tooling):
        small_config = {"grid": (2, 2), "window_frames": 9}
        gates = ("tests/test_worldmodel_layers.py",)
        backend_gates = {"flex": ("tests/test_worldmodel_layers.py::test_frame_attention_flex_on_cpu_matches_sdpa",)}
        state_knob = "window_frames"
        param_knob = "head_dim"

    @dataclass(kw_only=True)
    class Config(AttentionConfig):
        """Frame-local attention settings (projections as :class:`~seqmix.layers.attention.AttentionConfig`).

        Attributes:
            grid: ``(H, W)`` latent tokens per frame (inputs are ``[B, F*H*W, D]``, frame-major).
            window_frames: k >= 1, earlier frames a frame sees (chunked: frames seen, ending with the chunk).
            chunk_frames: c in ``[1, k]`` for the chunked (bidirectional-in-chunk) variant; None: per frame.
            backend: ``"auto"``, ``"flex"``, ``"sdpa"`` or ``"naive"``.
        """

        causal: bool | None = None
        grid: tuple[int, int]
        window_frames: int
        chunk_frames: int | None = None

    def __init__(self, dim: int, num_heads: int, config: "FrameLocalAttention.Config"):
        c = config
        self.grid = check_pair(self.name, "grid", c.grid)
        k = c.window_frames
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"{self.name}: window_frames must be an int >= 1 (frames seen before a frame), got {k!r}")
        ch = c.chunk_frames
        if ch is not None and (not isinstance(ch, int) or isinstance(ch, bool) or not 1 <= ch <= k):
            raise ValueError(f"{self.name}: chunk_frames must be None or an int in [1, window_frames={k}] (a chunk "
                             f"sees all of itself), got {ch!r}")
        super().__init__(dim, num_heads, config)
        self.window_frames, self.chunk_frames = k, ch
        self.frame_tokens = self.grid[0] * self.grid[1]

    @property
    def step_tokens(self) -> int:
        return self.frame_tokens * (self.chunk_frames or 1)

    def _carried_frames(self) -> int:
        """Frames whose keys and values are carried between steps: the last k (chunked: k - c, what the next chunk
        still sees). A step attends to these plus its own frame (chunk)."""
        return self.window_frames - (self.chunk_frames or 0)

    def state_size(self, seq_len: int | None = None) -> int:
        """Elements of the KV cache carried between steps after ``seq_len`` tokens (None: a full window), as every
        layer reports what it carries; the attention working set adds the step's own frame (chunk)."""
        n = self._carried_frames() * self.frame_tokens
        return self._kv_elements(n if seq_len is None else min(int(seq_len), n))

    def _keep(self, total: int, pos: int) -> int:
        # frames the next call's queries can still see: the last k (chunked, next chunk on a boundary: k - c)
        return min(total, self._carried_frames() * self.frame_tokens)

    def core_cost(self, n: int, ctx: int, batch: int, elem: int) -> Cost:
        """``4 H K`` per visible (query, key) pair; pairs counted frame by frame from the visibility rule."""
        H, K, ft = self.num_heads, self.head_dim, self.frame_tokens
        f0, f1 = ctx // ft, (ctx + n) // ft
        vis = 0
        for i in range(f0, f1):
            lo, hi = frame_ops._key_span(i, window_frames=self.window_frames, chunk_frames=self.chunk_frames)
            vis += min(hi, f1 - 1) - max(lo, 0) + 1
        flops = 4.0 * H * K * vis * ft * ft * batch
        cached = min(ctx, self._keep(ctx, ctx))
        return Cost(flops, elem * batch * H * K * (4 * n + 2 * cached), "frame attention: 4 H K x visible pairs")

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, grid={self.grid}, window_frames={self.window_frames}, "
                f"chunk_frames={self.chunk_frames}")

    # ------------------------------------------------------------------------------------------------ forward
    def _forward(self, x, *, layout, positions, state, return_state):
        B, T, _ = x.shape
        H, K, ft = self.num_heads, self.head_dim, self.frame_tokens
        num_frames(self.name, T, self.grid)

        q, k, v = self._qkv(x, positions)  # 1. projections [B, H, T, K], q/k norm, RoPE
        # 2. prepend the KV cache of the frames still visible
        if isinstance(state, KVCache) and isinstance(state.pos, int) and state.pos % self.step_tokens:
            raise ValueError(f"{self.name}: the carried state ends inside a chunk (after {state.pos // ft} "
                             f"frames, chunks of {self.chunk_frames}); with carried state every call but the "
                             f"last must end on a chunk boundary")
        k, v, pos = self._with_cache(k, v, state)

        # 3. attention over the visible frames
        backend = self.select_backend(q.device, q.dtype, {"head_dim": K, "cached": state is not None})
        self.last_backend = backend.name
        o = backend.fn(q, k, v, frame_tokens=ft, window_frames=self.window_frames, chunk_frames=self.chunk_frames,
                       q_frame0=pos // ft)  # [B, H, T, K]

        # 4. output projection
        y = self.wo(o.transpose(1, 2).reshape(B, T, H * K))
        new_state = self._next_state(k, v, pos + T) if return_state else None
        return y, new_state

