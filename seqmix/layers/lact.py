"""Large-chunk test-time training (LaCT; Zhang et al. 2025, "Test-Time Training Done Right", arXiv 2505.23884).

Per head, a SwiGLU MLP ``f(x) = w1 (silu(w0 x) * (w2 x))`` is the fast-weight state, updated once per chunk of
``chunk_size`` tokens (thousands on a GPU, a whole frame or several for video) on the negative dot-product loss
``-<f(k), v>`` with learnable per-token learning rates, optional momentum, optional Muon orthogonalisation of
the update and row renormalisation (see :mod:`seqmix.ops.lact`). Large chunks turn the update into plain batched
matmuls, which is what lets LaCT run near the matmul peak where TTT-MLP's 16-64-token mini-batches cannot.

Layer: a shared Q/K/V projection followed by SiLU; Q and K L2-normalised per head; per-token rates
``softplus(x W_lr + inv_softplus(base_lr))`` (three per head, fp32); momentum ``sigmoid(x W_m)`` per head; the
fast-weight scan in fp32 (fp64 for fp64 inputs) even under bf16 autocast; a per-head RMSNorm of the read-out
and an output projection.

Forms: non-causal (``causal=False``, the bidirectional / video form): each chunk first updates the weights, then
its queries read the updated weights. Causal: each chunk reads the weights from before it, then updates them,
so a token never sees its own chunk: pair the layer with window attention (the DiT's local attention, or a
hybrid ``swa`` / ``lact`` stack in ``MixerLM``) for precision inside a chunk, as LaCT does.

Chunks: ``chunk_size`` tokens each, or (``chunk_align="frame"`` / ``"segment"``) the frames or segments of the
sequence, read from the :class:`~seqmix.layers.spans.TokenSpans` a backbone passes as ``layout`` (the class declares
``takes_layout``). In the segmented DiT a segment chunk is a segment's text slot followed by its frames, and a frame
chunk is one latent frame, the first frame of a segment with that segment's text in front of it: text is read
first and updates the fast weights together with the frames it describes. The 3 s segments differ in length (13
latent frames for the first, 12 for the others), so a fixed ``chunk_size`` could not follow them.

Parameters (dim D, H heads, head dim K, hidden width F = ``inter_multi`` K): ``3 D H K`` (Q/K/V), ``H K D``
(output), ``3 D H`` (+``D H`` with momentum) rates, ``H K`` norm, and the initial fast weights ``3 H F K``.
State per sequence: ``3 H F K`` fast weights (+ as many momentum elements).

References (registry name, task form: public code; the test that equals it on the same weights in fp64):

- lact, lm: the public LaCT LM operators (``block_causal_lact_swiglu``: apply, then update; renormalised to the
  initial row norms; ``prenorm=True``: ``prenorm_block_causal_lact_swiglu``);
  tests/test_lact_ops.py::test_causal_scan_equals_public_lact_equations
- lact, video: the public LaCT bidirectional operator (update, then apply, every chunk);
  tests/test_lact_ops.py::test_noncausal_scan_equals_public_lact_equations
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from seqmix.ops import acc_dtype
from seqmix.ops import lact as lact_ops

from .base import Backend, Mixer, MixerConfig, register
from .cost import FP32_BYTES, Cost
from .spans import TokenSpans, aligned_bounds

__all__ = ["LaCT", "LaCTState"]


class LaCTState(NamedTuple):
    """Carried state of a causal LaCT layer between calls.

    ``weights``: fast weights after the last complete chunk ``(w0, w1, w2[, g0, g1, g2])`` (``[B, H, ...]``,
    fp32); ``pending``: ``k, v [B, H, n, K]``, ``lr0, lr1, lr2[, momentum] [B, H, n]`` of the ``0 <= n < C``
    tokens of the unfinished chunk. The next call re-feeds them: their outputs were already emitted and did not
    depend on them (apply-then-update), so continuing equals one full pass.
    """

    weights: tuple[torch.Tensor, ...]
    pending: tuple[torch.Tensor, ...]
    layer: str = ""


@register("lact")
class LaCT(Mixer):
    """LaCT: a per-head SwiGLU fast-weight MLP updated once per large chunk (see the module docstring)."""

    # Both backends run the same scan signature (seqmix.ops.lact.lact_scan).
    backend_table = (
        Backend("torch", lact_ops.lact_scan),
        Backend("naive", lact_ops.lact_scan_naive, reference=True),
    )
    causal_modes = (False, True)
    takes_layout = True

    class Tooling(Mixer.Tooling):
        small_config = {"chunk_size": 4, "inter_multi": 1.5, "momentum": True}
        # Paper-scale benchmarks: one CogVideoX latent frame (1350 tokens) per update where no layout is given
        # (bench layers); in the DiT the chunks follow the 3 s segments, as recipes/t2v/lact.yaml (chunk_size then
        # only sets how the cost model counts updates).
        bench_paper_config = {"chunk_size": 1350}
        dit_config = {"chunk_align": "segment"}
        gates = ("tests/test_lact_ops.py", "tests/test_lact.py")
        state_knob = "inter_multi"
        param_knob = "inter_multi"

    @dataclass(kw_only=True)
    class Config(MixerConfig):
        """LaCT settings.

        Attributes:
            causal: causal (apply-then-update) form with carried state, or the non-causal video form.
            chunk_size: tokens per fast-weight update (LaCT's LM: 2048; AR video: 3 latent frames). With
                ``chunk_align`` other than ``"tokens"`` the layout sets the chunks and ``chunk_size`` is only the
                typical chunk the cost model counts updates with (e.g. a frame's tokens).
            chunk_align: ``"tokens"`` (chunks of ``chunk_size``), ``"frame"`` or ``"segment"`` (the layout's
                frames / segments; every call then needs ``layout=TokenSpans(...)``, which the DiT passes).
            head_dim: fast-weight head dim K; default ``dim // num_heads``.
            inter_multi: hidden width of the SwiGLU fast weights over K (``F = inter_multi * K``).
            base_lr: the per-token rates' value at a zero projection (``softplus`` parameterisation).
            muon: orthogonalise every update with Newton-Schulz (Muon).
            muon_steps: Newton-Schulz iterations (5 in LaCT).
            renorm: after every update, renormalise each weight's rows to their norms in the initial fast weights
                (the parameters), as the public code does: every row keeps its initial norm.
            prenorm: the public LM layer's pre-norm form (``ttt_prenorm``): updates accumulate on raw weights and
                reads and inner gradients use their renormalised copy (post-norm, the default: the renormalised
                weights are the state). Needs ``renorm``.
            momentum: momentum on the chunk updates with a learned per-token coefficient (chunk mean).
            backend: ``"auto"``, ``"torch"`` (chunked matmuls) or ``"naive"`` (per-token reference).
        """

        causal: bool = False
        chunk_size: int = 2048
        chunk_align: str = "tokens"
        head_dim: int | None = None
        inter_multi: float = 1.0
        base_lr: float = 1e-2
        muon: bool = True
        muon_steps: int = 5
        renorm: bool = True
        prenorm: bool = False
        momentum: bool = False

    def __init__(self, dim: int, num_heads: int, config: "LaCT.Config"):
        super().__init__(dim, num_heads, config)
        c = config
        K = self.resolve_head_dim(c.head_dim)
        if not isinstance(c.chunk_size, int) or c.chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {c.chunk_size!r}")
        if c.chunk_align not in ("tokens",) + TokenSpans.UNITS:
            raise ValueError(f"chunk_align must be one of tokens, {', '.join(TokenSpans.UNITS)}; got {c.chunk_align!r}")
        Fw = int(round(K * c.inter_multi))
        if Fw < 1:
            raise ValueError(f"inter_multi={c.inter_multi} gives a fast-weight width of {Fw}; it must be >= 1")
        if not (isinstance(c.base_lr, (int, float)) and c.base_lr > 0):
            raise ValueError(f"base_lr must be a positive number, got {c.base_lr!r}")
        if c.muon and (not isinstance(c.muon_steps, int) or c.muon_steps < 1):
            raise ValueError(f"muon_steps must be a positive int when muon=True, got {c.muon_steps!r}")
        if c.prenorm and not c.renorm:
            raise ValueError("prenorm=True uses the renormalised weights: it needs renorm=True")
        self.head_dim, self.hidden = K, Fw
        H = num_heads
        self.qkv = nn.Linear(dim, 3 * H * K, bias=False)
        self.lr_proj = nn.Linear(dim, 3 * H, bias=False)
        self.momentum_proj = nn.Linear(dim, H, bias=False) if c.momentum else None
        self.w0 = nn.Parameter(torch.empty(H, Fw, K))
        self.w1 = nn.Parameter(torch.empty(H, K, Fw))
        self.w2 = nn.Parameter(torch.empty(H, Fw, K))
        self.o_norm = nn.RMSNorm(K, eps=1e-5)
        self.o_proj = nn.Linear(H * K, dim, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        K, Fw = self.head_dim, self.hidden
        for lin in (self.qkv, self.o_proj, self.lr_proj) + ((self.momentum_proj,) if self.momentum_proj else ()):
            nn.init.normal_(lin.weight, std=0.02)
        nn.init.normal_(self.w0, std=1 / math.sqrt(K))
        nn.init.normal_(self.w2, std=1 / math.sqrt(K))
        nn.init.normal_(self.w1, std=1 / math.sqrt(Fw))
        self.o_norm.reset_parameters()

    def state_size(self, seq_len: int | None = None) -> int:
        n = 3 * self.num_heads * self.hidden * self.head_dim  # the fast weights
        return n * (1 + self.config.prenorm + self.config.momentum)  # + the weights in use, + the last updates

    def core_cost(self, n: int, ctx: int, batch: int, elem: int, layout: TokenSpans | None = None) -> Cost:
        """Per head and token: ``4 K F`` (f(k)), ``8 K F`` (update), ``6 K F`` (read-out); per update, Newton-Schulz
        on the three weights (``4 m^2 M + 2 m^3`` per step, ``m, M`` the smaller and larger of K, F). A causal call
        after ``p`` pending tokens re-feeds them (as the layer does); only complete chunks update there. With
        ``chunk_align`` the chunks come from the call's layout (all complete, one update each); without the layout
        updates are estimated as ``ceil(n / C)``."""
        c = self.config
        H, K, F_, C = self.num_heads, self.head_dim, self.hidden, c.chunk_size
        aligned = c.chunk_align != "tokens"  # whole chunks per call, none pending; every chunk updates
        m = (ctx % C if self.causal and not aligned else 0) + n  # tokens the scan runs over
        if aligned and layout is not None:
            updates = len(layout.bounds(c.chunk_align)) - 1
        else:
            updates = m // C if self.causal and not aligned else -(-m // C)
        lo, hi = min(K, F_), max(K, F_)
        muon = 3 * c.muon_steps * (4.0 * lo * lo * hi + 2.0 * lo**3) if c.muon else 0.0
        flops = H * batch * (18.0 * K * F_ * m + updates * muon)
        # q, k, v and three rates read (fp32), o written; the fast weights read and written once per update
        nbytes = FP32_BYTES * batch * (H * m * (3 * K + 3) + H * n * K + self.state_size() * (1 + updates))
        return Cost(flops, nbytes, f"lact: 18 K F per token, chunks of C={C}")

    def extra_repr(self) -> str:
        c = self.config
        chunks = f"chunk_size={c.chunk_size}" if c.chunk_align == "tokens" else f"chunk_align={c.chunk_align}"
        return (f"{super().extra_repr()}, head_dim={self.head_dim}, hidden={self.hidden}, {chunks}, "
                f"muon={c.muon}, renorm={c.renorm}, prenorm={c.prenorm}, momentum={c.momentum}")

    # ------------------------------------------------------------------------------------------------ forward
    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``x [B, T, D]`` -> ``q, k, v [B, H, T, K]``, ``lr0, lr1, lr2[, momentum] [B, H, T]`` in fp32/fp64."""
        B, T, _ = x.shape
        H, K = self.num_heads, self.head_dim
        acc = acc_dtype(x)
        qkv = F.silu(self.qkv(x))  # autocast applies here
        with torch.autocast(device_type=x.device.type, enabled=False):
            q, k, v = qkv.to(acc).view(B, T, 3, H, K).permute(2, 0, 3, 1, 4)
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
            x32 = x.to(acc)
            offset = self.config.base_lr + math.log(-math.expm1(-self.config.base_lr))  # inv_softplus(base_lr)
            lr = F.softplus(F.linear(x32, self.lr_proj.weight.to(acc)) + offset)  # [B, T, 3H]
            lrs = tuple(lr.view(B, T, 3, H).permute(2, 0, 3, 1))  # 3 x [B, H, T]
            extra = ()
            if self.momentum_proj is not None:
                extra = (torch.sigmoid(F.linear(x32, self.momentum_proj.weight.to(acc))).transpose(1, 2),)
        return (q, k, v) + lrs + extra

    def _initial_state(self, B: int, acc: torch.dtype) -> tuple[torch.Tensor, ...]:
        ws = tuple(w.to(acc).unsqueeze(0).expand(B, *w.shape) for w in (self.w0, self.w1, self.w2))
        # (raw weights[, weights in use: the same before any update][, previous updates])
        return ws + (ws if self.config.prenorm else ()) + (tuple(torch.zeros_like(w) for w in ws)
                                                           if self.config.momentum else ())

    def _initial_norms(self, acc: torch.dtype) -> tuple[torch.Tensor, ...]:
        """The initial fast weights' row norms (``[1, H, rows, 1]`` each), the fixed target of every update's
        renormalisation: also for a call that continues from a carried state, so that it equals one pass."""
        return tuple(w.to(acc).norm(dim=-1, keepdim=True).unsqueeze(0) for w in (self.w0, self.w1, self.w2))

    def _chunk_bounds(self, layout, T: int) -> tuple[int, ...] | None:
        """The chunk boundaries of a call on ``T`` tokens (None: chunks of ``chunk_size``)."""
        return aligned_bounds(self.name, layout, self.config.chunk_align, T, knob="chunk_align", what="chunks",
                              fallback="a chunk_size")

    def _forward(self, x, *, layout, positions, state, return_state):
        bounds = self._chunk_bounds(layout, x.shape[1])
        if positions is not None:
            raise ValueError(f"{self.name}: takes no positions (LaCT's fast weights need none)")
        c = self.config
        B, T, _ = x.shape
        acc = acc_dtype(x)
        scan = self.select_backend(x.device).fn
        inputs = self._project(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            if state is not None:
                weights = self._check_state(state, B, x.device, acc)
                n_pend = state.pending[0].shape[2]
                # Queries of pending tokens were already read out: any placeholder works (outputs are dropped).
                inputs = tuple(torch.cat([p, t], dim=2) for p, t in zip((state.pending[0],) + state.pending, inputs))
            else:
                weights, n_pend = self._initial_state(B, acc), 0
            if bounds is not None and n_pend:  # aligned calls end on a chunk boundary and leave nothing pending
                raise ValueError(f"{self.name}: a state with {n_pend} pending tokens cannot continue with aligned "
                                 "chunks (chunk_align); it came from a chunk_align='tokens' call")
            q, k, v, lr0, lr1, lr2 = inputs[:6]
            mom = inputs[6] if c.momentum else None
            chunking = {"chunk_size": c.chunk_size} if bounds is None else {"chunk_bounds": bounds}
            o, new_weights = scan(q, k, v, lr0, lr1, lr2, weights, **chunking, causal=c.causal, momentum=mom,
                                  muon_steps=c.muon_steps if c.muon else 0, renorm=c.renorm,
                                  norms=self._initial_norms(acc) if c.renorm else None, prenorm=c.prenorm)
            o = self.o_norm(o[:, :, n_pend:].to(self.o_norm.weight.dtype))  # [B, H, T, K]
        y = self.o_proj(o.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))
        new_state = None
        if return_state:
            if not c.causal:
                raise ValueError(f"{self.name}: return_state needs causal=True (the non-causal form has no carry)")
            total = k.shape[2]
            tail = slice(total if bounds is not None else total - total % c.chunk_size, total)
            new_state = LaCTState(new_weights, tuple(t[:, :, tail] for t in inputs[1:]))
        return y, new_state

    def _check_state(self, state, B: int, device: torch.device, acc: torch.dtype) -> tuple[torch.Tensor, ...]:
        if not isinstance(state, LaCTState):
            raise TypeError(f"{self.name}: state must be the LaCTState returned with return_state=True, "
                            f"got {type(state).__name__}")
        expect = [tuple(t.shape) for t in self._initial_state(B, torch.float32)]
        got = [tuple(t.shape) for t in state.weights]
        if got != expect:
            raise ValueError(f"{self.name}: carried state shapes {got} != expected {expect}")
        return tuple(t.to(device=device, dtype=acc) for t in state.weights)
