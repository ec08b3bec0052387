"""Block-wise scans over video latents: ``blockwise_ssm`` (Mamba2 per block) and ``blockwise_ttt`` (TTT-MLP per block).

Po et al. 2025, "Long-Context State-Space Video World Models" (arXiv 2505.20171), Sec. 3: the ``H x W`` latent grid
of every frame is split into blocks of ``b_h x b_w`` tokens; each block is its own sequence of ``F b_h b_w`` tokens,
time-major (the block's tokens of frame 0 in raster order, then of frame 1, ...), scanned causally with its own
state. Temporally adjacent tokens are then ``b_h b_w`` apart instead of ``H W``, and the state per layer grows with
the number of blocks ``nb = (H / b_h)(W / b_w)``. Small blocks: more state, weaker spatial consistency; large
blocks: the reverse (the paper varies the block size from layer to layer; block size 1 was its worst ablation).

Input ``x: [B, F*H*W, D]``, frame-major (all tokens of frame 0, then frame 1, ...); ``grid=(H, W)`` and
``block=(b_h, b_w)`` come from the config (``H, W`` divisible by the block, else an error). Blocks are folded into
the batch (``[B nb, F b_h b_w, D]``, see :mod:`seqmix.layers._frames`), so the wrapped mixer's ops and backends do
the work unchanged. Both layers are frame-causal (``causal_modes = (True,)``): outputs of frames ``< j`` never
depend on frame ``j``; tokens of one frame may see each other. Calls hold whole frames; state is carried frame by
frame (or several frames at a time) with ``state=`` / ``return_state=True`` and equals one full pass.

* ``blockwise_ssm``: a :class:`~seqmix.layers.mamba2.Mamba2` (config: every Mamba2 option) run on the folded
  blocks; inside a block it is token-causal. Parameters: one Mamba2's (shared by all blocks, under ``inner.``).
  State: one :class:`~seqmix.layers.mamba2.Mamba2State` per block (folded batch ``B nb``):
  ``nb (H_m P N + (d_conv - 1) E_c)`` elements per sequence. Backends: Mamba2's (``mamba_ssm``, ``fla``,
  ``torch``, ``naive``).
* ``blockwise_ttt``: a non-causal (video-form) :class:`~seqmix.layers.ttt.TTTMLP` with ``mini_batch_size = b_h b_w``:
  a block's tokens of one frame form one mini-batch, updated then read out with the weights at its end, so the
  layer is frame-causal. No published system has it: it asks whether a richer state than Mamba2's helps here.
  Parameters: one TTT-MLP's (under ``inner.``). State: the inner model per block after the last frame,
  ``nb H (2 K F + F + K)`` elements per sequence (``F = mlp_expansion K``). Backends: TTT's (``triton``,
  ``torch``, ``naive``).

Legend: B batch, F frames, H x W grid, b_h x b_w block, nb blocks per frame, D model dim.

References (registry name, task form: public code; the test that equals it on the same weights in fp64):

- blockwise_ssm, worldmodel: the long-context world model's block-wise scan (Po et al. 2025): Mamba2 (mamba-ssm's
  SSD) on each spatial block's frame-major sequence;
  tests/test_worldmodel_layers.py::test_blockwise_ssm_blocks_are_mamba2_on_each_block_sequence
- blockwise_ttt, worldmodel: the same scan with TTT-MLP (ttt-video-dit's equations) per block, frame mini-batches;
  tests/test_worldmodel_layers.py::test_blockwise_ttt_is_ttt_mlp_per_block_with_frame_mini_batches
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch

from seqmix.ops import ttt as ttt_ops

from ._frames import check_block, check_pair, fold_blocks, num_frames, unfold_blocks
from .base import Backend, Mixer, MixerConfig, register
from .cost import Cost
from .mamba2 import Mamba2, Mamba2State
from .ttt import TTTMLP

__all__ = ["BlockwiseSSM", "BlockwiseTTT", "BlockwiseTTTState"]


def _delegate(name: str):
    """``supports`` of an outer backend record: whatever the wrapped mixer's record of the same name says."""

    def supports(layer: "_Blockwise", device: torch.device, dtype: torch.dtype, shapes) -> str | None:
        return layer.inner.backend_supports(name, device, dtype, shapes)

    return supports


def _mirror(table: tuple[Backend, ...]) -> tuple[Backend, ...]:
    """The wrapped mixer's backend records, asking it whether each can run (its checks read its own config)."""
    return tuple(Backend(b.name, b.fn, _delegate(b.name), b.reference) for b in table)


class _Blockwise(Mixer):
    """Shared by the block-wise layers: grid/block checks, folding, and the wrapped mixer ``inner``."""

    causal_modes = (True,)  # frame-causal: a frame's block tokens only ever see earlier frames and each other
    frame_input = True
    inner: Mixer

    def _init_grid(self, c) -> None:
        self.grid = check_pair(self.name, "grid", c.grid)
        self.block = check_pair(self.name, "block", c.block)
        check_block(self.name, self.grid, self.block)
        H, W = self.grid
        bh, bw = self.block
        self.num_blocks = (H // bh) * (W // bw)
        self.block_tokens = bh * bw

    @property
    def step_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def state_size(self, seq_len: int | None = None) -> int:
        return self.num_blocks * self.inner.state_size()

    def _block_cost(self, n: int, ctx: int, batch: int, elem: int) -> Cost:
        """The wrapped mixer's core cost over ``nb`` block sequences of ``n / nb`` tokens each."""
        nb = self.num_blocks
        return self.inner.core_cost(n // nb, ctx // nb, batch * nb, elem)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, grid={self.grid}, block={self.block}, blocks={self.num_blocks}"

    def _fold(self, x: torch.Tensor, layout, positions) -> torch.Tensor:
        if positions is not None:
            raise ValueError(f"{self.name}: takes no positions (the block scans are ordered by time)")
        num_frames(self.name, x.shape[1], self.grid)
        return fold_blocks(x, self.grid, self.block)

    def _check_batch(self, state_batch: int, B: int) -> None:
        if state_batch != B * self.num_blocks:
            raise ValueError(f"{self.name}: carried state holds {state_batch} block sequences; this call needs "
                             f"batch {B} x {self.num_blocks} blocks = {B * self.num_blocks}")


@register("blockwise_ssm")
class BlockwiseSSM(_Blockwise):
    """Block-wise Mamba2 scan (see the module docstring)."""

    backend_table = _mirror(Mamba2.backend_table)

    class Tooling(_Blockwise.Tooling):
        small_config = {"grid": (2, 2), "block": (1, 2), "d_state": 8, "expand": 2, "chunk_size": 4}
        gates = ("tests/test_worldmodel_layers.py", "tests/test_mamba2.py")
        backend_gates = Mamba2.Tooling.backend_gates
        state_knob = "d_state"
        param_knob = "expand"

    @dataclass(kw_only=True)
    class Config(Mamba2.Config):
        """Every :class:`~seqmix.layers.mamba2.Mamba2` option, plus:

        Attributes:
            grid: ``(H, W)`` latent tokens per frame (inputs are ``[B, F*H*W, D]``, frame-major).
            block: ``(b_h, b_w)`` tokens per block; must divide the grid. ``(H, W)``: one block, plain Mamba2 over
                the frame-major sequence; ``(1, 1)``: one Mamba2 sequence per grid position, over time.
        """

        grid: tuple[int, int]
        block: tuple[int, int]

    def __init__(self, dim: int, num_heads: int, config: "BlockwiseSSM.Config"):
        super().__init__(dim, num_heads, config)
        self._init_grid(config)
        inner = {f.name: getattr(config, f.name) for f in dataclasses.fields(Mamba2.Config)}
        self.inner = Mamba2(dim, num_heads, Mamba2.Config(**inner))
        self.num_heads = self.inner.num_heads  # Mamba2's real head count (expand * dim / headdim)

    def core_cost(self, n: int, ctx: int, batch: int, elem: int) -> Cost:
        """Mamba2's SSD formula over the ``nb`` block sequences (``n / nb`` tokens each)."""
        return self._block_cost(n, ctx, batch, elem)

    def head_shard_inner(self) -> Mamba2:
        """Tensor parallel splits the inner Mamba2 by its heads (it runs through its own ``forward``)."""
        return self.inner

    def _forward(self, x, *, layout, positions, state, return_state):
        B = x.shape[0]
        xb = self._fold(x, layout, positions)  # [B nb, F bh bw, D]
        if state is not None:
            if not isinstance(state, Mamba2State):
                raise TypeError(f"{self.name}: state must be the Mamba2State (one per block) returned with "
                                f"return_state=True, got {type(state).__name__}")
            self._check_batch(state.ssm.shape[0], B)
            state = state._replace(layer=self.inner.name)  # this layer's state is the inner Mamba2's, relabelled
        # The inner Mamba2 selects its backend (the same records and config as this layer's).
        out = self.inner(xb, state=state, return_state=return_state)
        yb, new_state = out if return_state else (out, None)
        return unfold_blocks(yb, self.grid, self.block), new_state


class BlockwiseTTTState(NamedTuple):
    """Carried state of :class:`BlockwiseTTT`: the TTT-MLP inner model of every block after the last frame,
    ``(W1, b1, W2, b2)``, each ``[B nb, H, ...]`` (fp32; fp64 for fp64 inputs). Calls hold whole frames, so no
    partial mini-batch is ever pending."""

    weights: tuple[torch.Tensor, ...]
    layer: str = ""


@register("blockwise_ttt")
class BlockwiseTTT(_Blockwise):
    """Block-wise TTT-MLP: one mini-batch per block and frame, video (non-causal) form (see the module docstring)."""

    backend_table = _mirror(TTTMLP.backend_table)
    _inner_fields: ClassVar[tuple[str, ...]] = ("head_dim", "base_lr", "ln_eps", "post_norm_eps",
                                                 "scan_checkpoint_group", "mlp_expansion", "backend")

    class Tooling(_Blockwise.Tooling):
        small_config = {"grid": (2, 2), "block": (1, 2), "mlp_expansion": 2}
        gates = ("tests/test_worldmodel_layers.py", "tests/test_ttt.py")
        backend_gates = TTTMLP.Tooling.backend_gates
        state_knob = "head_dim"
        param_knob = "head_dim"

    @dataclass(kw_only=True)
    class Config(MixerConfig):
        """Block-wise TTT-MLP settings (TTT-MLP options as :class:`~seqmix.layers.ttt.TTTConfig`).

        Attributes:
            grid: ``(H, W)`` latent tokens per frame (inputs are ``[B, F*H*W, D]``, frame-major).
            block: ``(b_h, b_w)`` tokens per block (= the TTT mini-batch); must divide the grid.
            head_dim: per-head width K; default ``dim // num_heads``.
            mlp_expansion: inner MLP width over K (TTT-MLP: 4).
            base_lr: base inner learning rate (``None``: TTT-MLP's 0.1).
            ln_eps, post_norm_eps: eps of the inner per-head LayerNorm and of the post-LayerNorm.
            scan_checkpoint_group: recompute the scan in backward in groups of this many frames (0: off).
            backend: ``"auto"``, ``"triton"``, ``"torch"`` or ``"naive"`` (TTT-MLP's backends).
        """

        grid: tuple[int, int]
        block: tuple[int, int]
        head_dim: int | None = None
        mlp_expansion: int = 4
        base_lr: float | None = None
        ln_eps: float = 1e-8
        post_norm_eps: float = 1e-6
        scan_checkpoint_group: int = 0

    def __init__(self, dim: int, num_heads: int, config: "BlockwiseTTT.Config"):
        super().__init__(dim, num_heads, config)
        self._init_grid(config)
        inner = {f: getattr(config, f) for f in self._inner_fields}
        self.inner = TTTMLP(dim, num_heads, TTTMLP.Config(causal=False, mini_batch_size=self.block_tokens, **inner))

    def core_cost(self, n: int, ctx: int, batch: int, elem: int) -> Cost:
        """TTT-MLP's non-causal mini-batch formula over the ``nb`` block sequences (one mini-batch per frame)."""
        return self._block_cost(n, 0, batch, elem)

    def _forward(self, x, *, layout, positions, state, return_state):
        B, T, _ = x.shape
        xb = self._fold(x, layout, positions)  # [B nb, F n, D], n = bh bw tokens per block and frame
        ttt, c = self.inner, self.inner.config
        Bn = xb.shape[0]
        scan = self.select_backend(x.device).fn
        # The TTT-MLP layer's projections, scan and read-out (seqmix.layers.ttt), starting from the carried inner
        # models: the non-causal scan over whole frames leaves no partial mini-batch, so its state is exact.
        q, k, r, eta = ttt._project(xb, None)  # [B nb, H, F n, K], eta [B nb, H, F n]
        with torch.autocast(device_type=x.device.type, enabled=False):
            acc = q.dtype
            ln_w, ln_b = ttt.ttt_norm_weight.to(acc), ttt.ttt_norm_bias.to(acc)
            if state is not None:
                weights = self._check_state(state, B, x.device, acc)
            else:
                weights = ttt_ops.init_state(tuple(ttt.inner_params().values()), Bn, acc)
            z, boundary = scan(q, k, r, eta, ln_w, ln_b, weights, kind="mlp", causal=False,
                               mini_batch_size=self.block_tokens, eps=c.ln_eps,
                               checkpoint_group=c.scan_checkpoint_group)
            y = q + ttt_ops.head_layer_norm(z, ln_w, ln_b, c.ln_eps)  # [B nb, H, F n, K]
            y = ttt.post_norm(y.transpose(1, 2).flatten(2).to(ttt.post_norm.weight.dtype))  # [B nb, F n, H K]
        y = ttt.wo(y)
        new_state = BlockwiseTTTState(tuple(boundary)) if return_state else None
        return unfold_blocks(y, self.grid, self.block), new_state

    def _check_state(self, state, B: int, device: torch.device, acc: torch.dtype) -> tuple[torch.Tensor, ...]:
        if not isinstance(state, BlockwiseTTTState):
            raise TypeError(f"{self.name}: state must be the BlockwiseTTTState returned with return_state=True, "
                            f"got {type(state).__name__}")
        self._check_batch(state.weights[0].shape[0], B)
        expect = [(B * self.num_blocks, *p.shape) for p in self.inner.inner_params().values()]
        got = [tuple(t.shape) for t in state.weights]
        if got != expect:
            raise ValueError(f"{self.name}: carried state shapes {got} != expected {expect}")
        return tuple(t.to(device=device, dtype=acc) for t in state.weights)
