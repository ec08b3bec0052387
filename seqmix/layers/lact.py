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
so a token never sees its own chunk. The public LM layer therefore adds sliding-window attention over the same
projection inside the layer (``window`` > 0, language tasks): the window recalls the current chunk, the fast
weights what lies before it. Without ``window`` pair the causal layer with window attention elsewhere (the DiT's
local attention, or a hybrid ``swa`` / ``lact`` stack in ``MixerLM``).

Chunks: ``chunk_size`` tokens each, or (``chunk_align="frame"`` / ``"segment"``) the frames or segments of the
sequence, read from the :class:`~seqmix.layers.spans.TokenSpans` a backbone passes as ``layout`` (the class declares
``takes_layout``). In the segmented DiT a segment chunk is a segment's text slot followed by its frames, and a frame
chunk is one latent frame, the first frame of a segment with that segment's text in front of it: text is read
first and updates the fast weights together with the frames it describes. The 3 s segments differ in length (13
latent frames for the first, 12 for the others), so a fixed ``chunk_size`` could not follow them.

Parameters (dim D, H heads, head dim K, hidden width F = ``inter_multi`` K): ``3 D H K`` (Q/K/V), ``H K D``
(output), ``3 D H`` (+``D H`` with momentum, +``D H`` with ``ttt_scale``) rates, ``H K`` norm, and the initial
fast weights ``3 H F K``; the LM layer adds ``4 H K`` (q / k scale and offset) and the projections' biases.
State per sequence: ``3 H F K`` fast weights (+ as many momentum elements; + the window's ``2 H K min(T, window)``
keys and values).

References (registry name, task form: public code; the test that equals it on the same weights in fp64):

- lact, lm: the public LaCT LM layer (``LaCTSWIGLULayer`` as its released configs: no q/k RMSNorm, full-rank fast
  weights; ``window`` > 0, ``window_heads``, ``ttt_scale``, ``rope``: its rotary embedding, fla's
  ``RotaryEmbedding``, on the window's and the fast weights' q and k; ``ttt_nope``);
  tests/test_lact.py::test_lm_layer_equals_the_public_lact_lm_layer
- lact, lm: its causal operators (``block_causal_lact_swiglu``: apply, then update; renormalised to the initial
  row norms; ``prenorm=True``: ``prenorm_block_causal_lact_swiglu``);
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
from seqmix.ops.rope import apply_rope, rope_angles

from .base import Backend, Mixer, MixerConfig, register
from .cost import FP32_BYTES, Cost, attention_pairs
from .spans import TokenSpans, aligned_bounds

__all__ = ["LaCT", "LaCTState"]


def _linear(x: torch.Tensor, lin: nn.Linear) -> torch.Tensor:
    """``lin(x)`` in ``x``'s dtype (the rate projections run in fp32 / fp64 whatever the layer's dtype)."""
    return F.linear(x, lin.weight.to(x.dtype), None if lin.bias is None else lin.bias.to(x.dtype))


class LaCTState(NamedTuple):
    """Carried state of a causal LaCT layer between calls.

    ``weights``: fast weights after the last complete chunk ``(w0, w1, w2[, g0, g1, g2])`` (``[B, H, ...]``,
    fp32); ``pending``: ``k, v [B, H, n, K]``, ``lr0, lr1, lr2[, momentum] [B, H, n]`` of the ``0 <= n < C``
    tokens of the unfinished chunk. The next call re-feeds them: their outputs were already emitted and did not
    depend on them (apply-then-update), so continuing equals one full pass. ``window_kv``: the window branch's
    keys and values ``[B, Ha, n, H K / Ha]`` of the last ``n <= window - 1`` tokens (``()`` without the branch).
    """

    weights: tuple[torch.Tensor, ...]
    pending: tuple[torch.Tensor, ...]
    window_kv: tuple[torch.Tensor, ...] = ()
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
    takes_positions = True  # used by the LM layer's rotary embedding (rope=True); the other forms ignore them

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
            window: > 0 builds the public LM layer (``LaCTSWIGLULayer``; causal only): a sliding-window attention
                branch (``window`` keys per query, itself included; the public LM: 2048, the chunk size) over the
                same Q/K/V projection before its SiLU, summed with the fast-weight read-out before the output
                projection, so tokens of the current chunk, which the fast weights have not seen yet, are still
                recalled; per-channel scale and offset on the fast-weight Q and K; biases on the rate, momentum
                and scale projections. 0: the fast-weight operator alone (the video / bidirectional form).
            window_heads: attention heads of the window branch over the projection's ``H K`` width (default
                ``num_heads``; the public 760M LM: 24 attention heads beside 4 fast-weight heads).
            ttt_scale: the public ``learnable_ttt_scale``: the read-out of each head scaled by ``silu(x W + b)``.
            rope: the LM layer's rotary embedding (needs ``window``): the window attention's q and k, and after
                their L2 norm the fast weights' q and k (in the attention heads' layout, as the public layer), turn
                by the token positions a backbone passes (``positions [T]`` or ``[B, T]``; calls without them are
                refused); the halves of a head rotate together (fla's ``RotaryEmbedding``). Off: positions are
                ignored, and the order comes from the chunk scan and the backbone's short convolution.
            rope_theta: its base (the public layer's default 500,000; the public LM model passes its config's
                ``rope_theta``, 1e6 in every released config and in ``recipes/mqar/lact.yaml``).
            ttt_nope: the public ``ttt_nope``: the rotary embedding on the window attention only.
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
        window: int = 0
        window_heads: int | None = None
        ttt_scale: bool = False
        rope: bool = False
        rope_theta: float = 500_000.0
        ttt_nope: bool = False

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
        H = num_heads
        if not isinstance(c.window, int) or isinstance(c.window, bool) or c.window < 0:
            raise ValueError(f"window must be an int >= 0 (0: no attention branch), got {c.window!r}")
        lm = c.window > 0
        if lm and not c.causal:
            raise ValueError(f"window={c.window}: the window-attention branch is the public LM layer's, which is "
                             "causal; set causal=True or window=0 (the non-causal form)")
        if c.rope and not lm:
            raise ValueError("rope=True is the public LM layer's rotary embedding: it needs window > 0")
        if c.ttt_nope and not c.rope:
            raise ValueError("ttt_nope=True leaves the fast weights out of the rotary embedding: it needs rope=True")
        if c.rope and not (isinstance(c.rope_theta, (int, float)) and c.rope_theta > 0):
            raise ValueError(f"rope_theta must be a positive number, got {c.rope_theta!r}")
        Ha = c.window_heads or H
        if lm and (not isinstance(Ha, int) or Ha < 1 or (H * K) % Ha):
            raise ValueError(f"window_heads must be a positive int dividing the projection width H K = {H * K}, "
                             f"got {c.window_heads!r}")
        if c.rope and (H * K // Ha) % 2:
            raise ValueError(f"rope=True needs an even attention head width H K / window_heads, got {H * K // Ha}")
        self.head_dim, self.hidden, self.window_heads = K, Fw, Ha
        self.qkv = nn.Linear(dim, 3 * H * K, bias=False)
        self.lr_proj = nn.Linear(dim, 3 * H, bias=lm)
        self.momentum_proj = nn.Linear(dim, H, bias=lm) if c.momentum else None
        self.scale_proj = nn.Linear(dim, H, bias=lm) if c.ttt_scale else None
        # the public LM layer's per-channel scale and offset of the fast-weight q, k: [H K, (q, k)]
        self.qk_scale = nn.Parameter(torch.ones(H * K, 2)) if lm else None
        self.qk_offset = nn.Parameter(torch.zeros(H * K, 2)) if lm else None
        self.w0 = nn.Parameter(torch.empty(H, Fw, K))
        self.w1 = nn.Parameter(torch.empty(H, K, Fw))
        self.w2 = nn.Parameter(torch.empty(H, Fw, K))
        self.o_norm = nn.RMSNorm(K, eps=1e-5)
        self.o_proj = nn.Linear(H * K, dim, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        K, Fw = self.head_dim, self.hidden
        for lin in (self.qkv, self.o_proj, self.lr_proj, self.momentum_proj, self.scale_proj):
            if lin is not None:
                nn.init.normal_(lin.weight, std=0.02)
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)
        if self.qk_scale is not None:
            nn.init.ones_(self.qk_scale)
            nn.init.zeros_(self.qk_offset)
        nn.init.normal_(self.w0, std=1 / math.sqrt(K))
        nn.init.normal_(self.w2, std=1 / math.sqrt(K))
        nn.init.normal_(self.w1, std=1 / math.sqrt(Fw))
        self.o_norm.reset_parameters()

    def state_size(self, seq_len: int | None = None) -> int:
        n = 3 * self.num_heads * self.hidden * self.head_dim  # the fast weights
        n *= 1 + self.config.prenorm + self.config.momentum  # + the weights in use, + the last updates
        w = self.config.window
        if w:  # + the window branch's keys and values a query sees (as swa counts them)
            n += 2 * self.num_heads * self.head_dim * (w if seq_len is None else min(seq_len, w))
        return n

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
        fw = 3 * H * F_ * K * (1 + c.prenorm + c.momentum)
        nbytes = FP32_BYTES * batch * (H * m * (3 * K + 3) + H * n * K + fw * (1 + updates))
        if c.window:  # the window branch: 4 H K flops per visible (query, key) pair; keys and values read once
            flops += 4.0 * batch * H * K * attention_pairs("swa", c.window, True, n, ctx)
            nbytes += FP32_BYTES * batch * 2 * H * K * (n + min(ctx, c.window - 1))
        return Cost(flops, nbytes, f"lact: 18 K F per token, chunks of C={C}"
                    + (f", window attention of {c.window}" if c.window else ""))

    def extra_repr(self) -> str:
        c = self.config
        chunks = f"chunk_size={c.chunk_size}" if c.chunk_align == "tokens" else f"chunk_align={c.chunk_align}"
        return (f"{super().extra_repr()}, head_dim={self.head_dim}, hidden={self.hidden}, {chunks}, "
                f"muon={c.muon}, renorm={c.renorm}, prenorm={c.prenorm}, momentum={c.momentum}"
                + (f", window={c.window}, window_heads={self.window_heads}" if c.window else "")
                + (", ttt_scale=True" if c.ttt_scale else "")
                + (f", rope_theta={c.rope_theta:g}" + (", ttt_nope=True" if c.ttt_nope else "") if c.rope else ""))

    # ------------------------------------------------------------------------------------------------ forward
    def _project(self, x: torch.Tensor, angles: torch.Tensor | None
                 ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """``x [B, T, D]`` -> the scan inputs ``q, k, v [B, H, T, K]``, ``lr0, lr1, lr2[, momentum] [B, H, T]`` in
        fp32/fp64, and (window branch only, else ``()``) the attention's ``q, k, v [B, Ha, T, H K / Ha]`` in the
        projection's dtype: the projection before the fast weights' SiLU, as the public LM layer. ``angles``
        (``rope``): RoPE angles ``[T | B T, H K / Ha / 2]`` for the attention's q, k and the fast weights' q, k."""
        B, T, _ = x.shape
        H, K = self.num_heads, self.head_dim
        acc = acc_dtype(x)
        qkv = self.qkv(x)  # [B, T, 3 H K]; autocast applies here
        attn = ()
        if self.config.window:
            Ha = self.window_heads
            attn = tuple(t.reshape(B, T, Ha, -1) for t in qkv.chunk(3, dim=-1))  # [B, T, Ha, Ka]
            if angles is not None:
                attn = (apply_rope(attn[0], angles, interleaved=False), apply_rope(attn[1], angles, interleaved=False),
                        attn[2])
            attn = tuple(t.transpose(1, 2) for t in attn)
            fq, fk, fv = qkv.chunk(3, dim=-1)
            qkv = torch.cat([fq * self.qk_scale[:, 0] + self.qk_offset[:, 0],
                             fk * self.qk_scale[:, 1] + self.qk_offset[:, 1], fv], dim=-1)
        qkv = F.silu(qkv)
        with torch.autocast(device_type=x.device.type, enabled=False):
            q, k, v = qkv.to(acc).view(B, T, 3, H, K).permute(2, 0, 3, 1, 4)
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
            if angles is not None and not self.config.ttt_nope:  # after the norm, in the attention heads' layout
                q, k = (apply_rope(t.transpose(1, 2).reshape(B, T, self.window_heads, -1), angles, interleaved=False)
                        .view(B, T, H, K).transpose(1, 2) for t in (q, k))
            x32 = x.to(acc)
            offset = self.config.base_lr + math.log(-math.expm1(-self.config.base_lr))  # inv_softplus(base_lr)
            lr = F.softplus(_linear(x32, self.lr_proj) + offset)  # [B, T, 3H]
            lrs = tuple(lr.view(B, T, 3, H).permute(2, 0, 3, 1))  # 3 x [B, H, T]
            extra = ()
            if self.momentum_proj is not None:
                extra = (torch.sigmoid(_linear(x32, self.momentum_proj)).transpose(1, 2),)
        return (q, k, v) + lrs + extra, attn

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
        c = self.config
        B, T, _ = x.shape
        acc = acc_dtype(x)
        backend = self.select_backend(x.device)
        inputs, attn = self._project(x, self._angles(positions, B, T) if c.rope else None)
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
            o, new_weights = backend.fn(q, k, v, lr0, lr1, lr2, weights, **chunking, causal=c.causal, momentum=mom,
                                        muon_steps=c.muon_steps if c.muon else 0, renorm=c.renorm,
                                        norms=self._initial_norms(acc) if c.renorm else None, prenorm=c.prenorm)
            o = self.o_norm(o[:, :, n_pend:].to(self.o_norm.weight.dtype))  # [B, H, T, K]
        if self.scale_proj is not None:  # [B, T, H] -> per head
            o = o * F.silu(self.scale_proj(x)).transpose(1, 2).unsqueeze(-1).to(o.dtype)
        o = o.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim)
        window_kv = ()
        if attn:
            o_attn, window_kv = self._window_attention(*attn, state, return_state, naive=backend.name == "naive")
            o = o + o_attn.to(o.dtype)
        y = self.o_proj(o)
        new_state = None
        if return_state:
            if not c.causal:
                raise ValueError(f"{self.name}: return_state needs causal=True (the non-causal form has no carry)")
            total = k.shape[2]
            tail = slice(total if bounds is not None else total - total % c.chunk_size, total)
            new_state = LaCTState(new_weights, tuple(t[:, :, tail] for t in inputs[1:]), window_kv)
        return y, new_state

    def _angles(self, positions: torch.Tensor | None, B: int, T: int) -> torch.Tensor:
        """RoPE angles ``[T | B T, Ka / 2]`` (fp64) of the positions a backbone passes (``rope``)."""
        if positions is None:
            raise ValueError(f"{self.name}: rope=True needs token positions (positions=[T] or [B, T]); MixerLM "
                             "passes them with its rope=True")
        if not isinstance(positions, torch.Tensor) or positions.is_floating_point() or \
                positions.shape not in ((T,), (B, T)):
            raise ValueError(f"{self.name}: positions must be an integer tensor [T={T}] or [B={B}, T={T}], got "
                             f"{getattr(positions, 'shape', type(positions).__name__)}")
        return rope_angles(positions, self.num_heads * self.head_dim // self.window_heads, self.config.rope_theta)

    def _window_attention(self, q, k, v, state, return_state: bool, naive: bool):
        """The LM layer's window branch: ``q, k, v [B, Ha, T, Ka]`` (the carried keys and values of up to
        ``window - 1`` earlier tokens put in front) -> ``[B, T, Ha Ka]`` and the keys / values to carry (``()``
        unless ``return_state``). The naive scan backend pairs with the dense attention reference."""
        from seqmix.ops.attention import attention_naive, attention_sdpa

        B, Ha, T, Ka = q.shape
        if state is not None and state.window_kv:
            ck, cv = state.window_kv
            k, v = torch.cat([ck.to(k), k], dim=2), torch.cat([cv.to(v), v], dim=2)
        fn = attention_naive if naive else attention_sdpa
        o = fn(q, k, v, kind="swa", window=self.config.window, causal=True)  # [B, Ha, T, Ka]
        kv = ()
        if return_state:
            keep = min(k.shape[2], self.config.window - 1)
            # clone: a slice would keep the whole concatenated [carried + new] tensor alive
            kv = (k[:, :, k.shape[2] - keep:].clone(), v[:, :, v.shape[2] - keep:].clone())
        return o.transpose(1, 2).reshape(B, T, Ha * Ka), kv

    def _check_state(self, state, B: int, device: torch.device, acc: torch.dtype) -> tuple[torch.Tensor, ...]:
        if not isinstance(state, LaCTState):
            raise TypeError(f"{self.name}: state must be the LaCTState returned with return_state=True, "
                            f"got {type(state).__name__}")
        expect = [tuple(t.shape) for t in self._initial_state(B, torch.float32)]
        got = [tuple(t.shape) for t in state.weights]
        if got != expect:
            raise ValueError(f"{self.name}: carried state shapes {got} != expected {expect}")
        w = self.config.window
        if w:
            kv = state.window_kv
            shape = (B, self.window_heads, None, self.num_heads * self.head_dim // self.window_heads)
            if (len(kv) != 2 or any(t.dim() != 4 or tuple(t.shape[:2]) + t.shape[3:] != shape[:2] + shape[3:]
                                    for t in kv) or kv[0].shape != kv[1].shape or kv[0].shape[2] > w - 1):
                raise ValueError(f"{self.name}: carried window keys / values {[tuple(t.shape) for t in kv]} do not "
                                 f"fit [B={B}, Ha={shape[1]}, n <= window - 1 = {w - 1}, {shape[3]}] (two tensors)")
        elif state.window_kv:
            raise ValueError(f"{self.name}: the state carries window keys / values but this layer has window=0")
        return tuple(t.to(device=device, dtype=acc) for t in state.weights)
