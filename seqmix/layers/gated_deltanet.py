"""Gated DeltaNet mixer (Yang, Kautz & Hatamizadeh 2024, "Gated Delta Networks: Improving Mamba2 with Delta
Rule", arXiv 2412.06464), built as fla's ``fla.layers.GatedDeltaNet`` (same parameter names, shapes and init, so
``layer.load_state_dict(fla_layer.state_dict())`` works).

Block, per token (legend: B batch, T tokens, D model dim, H query/key heads, HV value heads, K key head dim,
V value head dim = ``expand_v * K``, W short-conv width, C = ``2 H K + HV V`` conv channels):

1. ``q, k = q_proj(x), k_proj(x)`` (``[B, T, H K]``), ``v = v_proj(x)`` (``[B, T, HV V]``);
   ``a = a_proj(x)``, ``b = b_proj(x)`` (``[B, T, HV]``).
2. Causal depthwise short convolutions (width W) + SiLU on q, k, v (``q_conv1d``, ``k_conv1d``, ``v_conv1d``).
3. Per head: q, k L2-normalised; decay ``g = -exp(A_log) * softplus(a + dt_bias)`` (log space, Mamba2-style);
   write strength ``beta = sigmoid(b)`` (``2 sigmoid(b)`` with ``allow_neg_eigval``); the gated delta rule
   ``S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T``, ``o_t = S_t^T q_t / sqrt(K)``
   (see :mod:`seqmix.ops.delta_rule`).
4. Per-head RMSNorm of ``o`` (``o_norm``), gated by ``swish(g_proj(x))`` (``use_gate``); ``o_proj`` back to D.

Parameters (no biases in the linears): ``D (2 H K + 2 HV V + 2 HV) + HV V D`` (the ``g_proj`` share
``D HV V`` only with ``use_gate``), ``2 HV`` (``A_log``, ``dt_bias``), ``W C`` (+ ``C`` with ``conv_bias``) for
the short convs and ``V`` for ``o_norm``. fla's sizing rule of thumb (``H K = 0.75 D``, ``expand_v = 2``) gives
about ``6 D^2``: 25.2M at D = 2048.

State carried across calls (:class:`GatedDeltaNetState`): the last ``W - 1`` pre-convolution q|k|v projections
``[B, W - 1, C]`` and the recurrent state ``[B, HV, K, V]`` (fp32; fp64 for fp64 layers), i.e.
``HV K V + (W - 1) C`` elements per sequence.

Backends: ``"fla"`` (fla's Triton kernels: ``chunk_gated_delta_rule`` for training / long inputs,
``fused_recurrent_gated_delta_rule`` for short inference calls, fla's fused short conv and gated RMSNorm; CUDA,
or CPU under ``TRITON_INTERPRET=1`` when requested explicitly, for tests), ``"torch"`` (chunked WY form, any
device, fp32/fp64) and ``"naive"`` (per-token loop; reference only).

References (registry name, task form: public code; the test that equals it on the same weights in fp64):

- gated_deltanet, lm: flash-linear-attention's ``naive_recurrent_gated_delta_rule`` / ``chunk_gated_delta_rule``
  references; tests/test_gated_deltanet.py::test_ops_match_fla_naive_fp32
- gated_deltanet, lm: ``fla.layers.GatedDeltaNet`` (same names, same initialisation, same outputs);
  tests/test_gated_deltanet.py::test_state_dict_matches_fla_layer
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from seqmix.ops import acc_dtype
from seqmix.ops import delta_rule as dr_ops
from seqmix.ops import external
from seqmix.ops.conv import causal_depthwise_conv1d, conv_tail
from seqmix.utils.triton_compat import patch_triton_interpreter

from .base import Backend, Mixer, MixerConfig, register, triton_device_reason
from .cost import FP32_BYTES, Cost
from .sharding import HeadShardSpec

logger = logging.getLogger(__name__)

__all__ = ["GatedDeltaNet", "GatedDeltaNetState"]

# fla's layer switches to the fused recurrent kernel for inference calls up to this many tokens (decode steps,
# short chunks): it needs no chunk-level precomputation, and it has no backward.
_FUSED_RECURRENT_MAX_T = 64
# eps of fla's in-kernel L2 norm of q and k (fla.modules.l2norm: x / sqrt(sum(x^2) + eps)).
_L2NORM_EPS = 1e-6
_GATE_ACTIVATIONS = ("swish", "silu", "sigmoid")


class GatedDeltaNetState(NamedTuple):
    """State of a Gated DeltaNet layer between calls (returned with ``return_state=True``).

    ``conv``: ``[B, W - 1, 2 H K + HV V]``, the last ``W - 1`` q|k|v projections before the short convolution
    (channel order q, k, v; ``None`` when ``use_short_conv=False``); zeros stand for tokens before the start.
    ``recurrent``: ``[B, HV, K, V]`` the delta-rule state ``S`` (fp32, or fp64 for fp64 layers), in fla's
    default ``[K, V]`` layout, so states move freely between the ``fla`` and ``torch`` backends.
    """

    conv: torch.Tensor | None
    recurrent: torch.Tensor
    layer: str = ""  # registry name of the producing layer (set by Mixer.forward; see seqmix.layers.base)




# ------------------------------------------------------------------------------------------ torch pieces


def _l2norm(x: torch.Tensor) -> torch.Tensor:
    """``x / sqrt(sum(x^2) + eps)`` over the last dim, as fla's in-kernel norm."""
    return x * torch.rsqrt(x.square().sum(-1, keepdim=True) + _L2NORM_EPS)


def _rms_norm_gated(o: torch.Tensor, gate: torch.Tensor | None, weight: torch.Tensor, eps: float,
                    activation: str) -> torch.Tensor:
    """RMSNorm over the last dim times ``act(gate)``, as fla's ``FusedRMSNormGated`` / ``RMSNorm`` (in o's dtype)."""
    y = o * torch.rsqrt(o.square().mean(-1, keepdim=True) + eps) * weight.to(o.dtype)
    if gate is None:
        return y
    gate = gate.to(o.dtype)
    return y * (torch.sigmoid(gate) if activation == "sigmoid" else F.silu(gate))


class _OutputNorm(nn.Module):
    """Per-head RMSNorm of the delta-rule output with an optional gate: fla's ``FusedRMSNormGated`` (``use_gate``)
    or ``RMSNorm`` (weight only, no bias) in PyTorch; ``[..., V] -> [..., V]`` in the input's dtype."""

    def __init__(self, hidden_size: int, eps: float, activation: str | None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=torch.float32))  # fla keeps it fp32 when ungated
        self.eps, self.activation = eps, activation

    def forward(self, o: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        return _rms_norm_gated(o, gate, self.weight, self.eps, self.activation or "swish")

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, activation={self.activation}"


def _fla_supports(layer: "GatedDeltaNet", device: torch.device, dtype: torch.dtype, shapes) -> str | None:
    reason = triton_device_reason(layer, "fla", device, dtype, "fla's Triton kernels")
    if reason:
        return reason
    if device.type == "cpu" and dtype not in (torch.float32, torch.float16):
        return f"the Triton interpreter computes {dtype} wrongly; use float32 or float16"
    try:
        external.fla_gated_delta_rule()
    except ImportError as e:
        return str(e)
    return None


@register("gated_deltanet")
class GatedDeltaNet(Mixer):
    """Gated DeltaNet (arXiv 2412.06464) with fla's layer structure; causal by construction.

    ``x: [B, T, D] -> [B, T, D]``; ``num_heads`` from :func:`seqmix.layers.build` is H (query/key heads).
    See the module docstring for the block, parameter count and state.
    """

    # fla: its fused short conv, delta rule and gated norm (``_mix_fla``); torch / naive: ``_mix_torch`` around the
    # delta-rule op of seqmix.ops.delta_rule.
    backend_table = (
        Backend("fla", external.fla_gated_delta_rule, _fla_supports),
        Backend("torch", dr_ops.chunk_gated_delta_rule),
        Backend("naive", dr_ops.naive_recurrent_gated_delta_rule, reference=True),
    )
    causal_modes = (True,)

    class Tooling(Mixer.Tooling):
        small_config = {"head_dim": 16, "expand_v": 1.0}
        gates = ("tests/test_gated_deltanet.py",)
        backend_gates = {"fla": ("tests/test_gated_deltanet.py::test_layer_fla_matches_torch",
                                 "tests/test_gated_deltanet.py::test_state_carry_fla_and_across_backends")}
        # Growing the head dim grows K and V = expand_v K: the state H K V and the projections grow monotonically.
        state_knob = "head_dim"
        param_knob = "head_dim"
        kernel_test_config = {"head_dim": 64}
        sweep_knobs = {"head_dim": (16, 32)}

    @dataclass(kw_only=True)
    class Config(MixerConfig):
        """Gated DeltaNet settings (names follow ``fla.layers.GatedDeltaNet``).

        Attributes:
            head_dim: key head dim K; default ``dim // num_heads``. (fla's guide: ``num_heads * head_dim = 0.75 D``.)
            expand_v: value head dim V = ``expand_v * head_dim`` (must be an integer; paper / fla: 2).
            num_v_heads: value heads HV (grouped value attention when ``> num_heads``; a multiple of it);
                default ``num_heads``.
            use_short_conv: causal depthwise convolutions + SiLU on q, k, v (the paper's; fla warns without).
            conv_size: short-convolution width W (>= 2; fla: 4).
            conv_bias: bias in the short convolutions.
            use_gate: output gate ``act(g_proj(x))`` on the normalised output (else a plain RMSNorm).
            output_gate_activation: ``"swish"`` (= ``"silu"``) or ``"sigmoid"``.
            allow_neg_eigval: ``beta = 2 sigmoid(b)`` in ``(0, 2)``, so ``I - beta k k^T`` may have negative
                eigenvalues (Grazzi et al. 2024, arXiv 2411.12537).
            norm_eps: eps of the output RMSNorm.
            chunk_size: tokens per chunk of the ``"torch"`` backend's chunked form (fla's kernels use 64).
            backend: ``"auto"`` (fla on CUDA, else torch), ``"fla"``, ``"torch"`` or ``"naive"`` (reference loop).
        """

        head_dim: int | None = None
        expand_v: float = 2.0
        num_v_heads: int | None = None
        use_short_conv: bool = True
        conv_size: int = 4
        conv_bias: bool = False
        use_gate: bool = True
        output_gate_activation: str = "swish"
        allow_neg_eigval: bool = False
        norm_eps: float = 1e-5
        chunk_size: int = 64

    def __init__(self, dim: int, num_heads: int, config: Config):
        super().__init__(dim, num_heads, config)
        c = config
        self._validate(dim, num_heads, c)
        H = num_heads
        K = self.resolve_head_dim(c.head_dim)
        HV = c.num_v_heads if c.num_v_heads is not None else H
        V = int(round(K * c.expand_v))
        self.head_k_dim, self.head_v_dim, self.num_v_heads = K, V, HV
        self.key_dim, self.value_dim = H * K, HV * V

        # 1. projections (fla: no biases)
        self.q_proj = nn.Linear(dim, self.key_dim, bias=False)
        self.k_proj = nn.Linear(dim, self.key_dim, bias=False)
        self.v_proj = nn.Linear(dim, self.value_dim, bias=False)
        self.a_proj = nn.Linear(dim, HV, bias=False)
        self.b_proj = nn.Linear(dim, HV, bias=False)
        # decay rate exp(A_log) and the softplus time-step bias, per value head (Mamba2's parametrisation)
        self.A_log = nn.Parameter(torch.empty(HV, dtype=torch.float32))
        self.dt_bias = nn.Parameter(torch.empty(HV, dtype=torch.float32))
        self.A_log._no_weight_decay = True
        self.dt_bias._no_weight_decay = True
        # 2. short convolutions: depthwise Conv1d modules, i.e. fla's ShortConvolution parameters and init; the
        # forward below runs them as one causal conv over q|k|v with the carried cache as left context.
        if c.use_short_conv:
            W = c.conv_size
            self.q_conv1d = nn.Conv1d(self.key_dim, self.key_dim, W, groups=self.key_dim, bias=c.conv_bias)
            self.k_conv1d = nn.Conv1d(self.key_dim, self.key_dim, W, groups=self.key_dim, bias=c.conv_bias)
            self.v_conv1d = nn.Conv1d(self.value_dim, self.value_dim, W, groups=self.value_dim, bias=c.conv_bias)
        else:
            logger.warning("gated_deltanet: use_short_conv=False; the short convolutions matter for quality")
        # 4. output gate, per-head RMSNorm (fla keeps the ungated norm's weight in fp32), output projection
        if c.use_gate:
            self.g_proj = nn.Linear(dim, self.value_dim, bias=False)
        self.o_norm = _OutputNorm(V, c.norm_eps, c.output_gate_activation if c.use_gate else None)
        self.o_proj = nn.Linear(self.value_dim, dim, bias=False)
        self.reset_parameters()

    def _validate(self, dim: int, num_heads: int, c: Config) -> None:
        K = self.resolve_head_dim(c.head_dim)
        if not isinstance(c.expand_v, (int, float)) or c.expand_v <= 0:
            raise ValueError(f"gated_deltanet: expand_v must be a positive number, got {c.expand_v!r}")
        if not math.isclose(K * c.expand_v, round(K * c.expand_v), rel_tol=0, abs_tol=1e-6):
            raise ValueError(
                f"gated_deltanet: head_dim * expand_v = {K} * {c.expand_v} = {K * c.expand_v} must be an integer "
                "(the value head dim)"
            )
        HV = c.num_v_heads
        if HV is not None and (not isinstance(HV, int) or HV <= 0 or HV % num_heads):
            raise ValueError(
                f"gated_deltanet: num_v_heads must be a positive multiple of num_heads={num_heads} (or None), "
                f"got {HV!r}"
            )
        if not isinstance(c.conv_size, int) or c.conv_size < 2:
            raise ValueError(f"gated_deltanet: conv_size must be an int >= 2, got {c.conv_size!r}")
        if c.output_gate_activation not in _GATE_ACTIVATIONS:
            raise ValueError(
                f"gated_deltanet: output_gate_activation must be one of {_GATE_ACTIVATIONS}, "
                f"got {c.output_gate_activation!r}"
            )
        if not isinstance(c.chunk_size, int) or c.chunk_size < 1:
            raise ValueError(f"gated_deltanet: chunk_size must be a positive int, got {c.chunk_size!r}")
        if not c.norm_eps > 0:
            raise ValueError(f"gated_deltanet: norm_eps must be > 0, got {c.norm_eps!r}")

    def reset_parameters(self) -> None:
        """fla's init: default nn.Linear / Conv1d init, ``A ~ U(0, 16)``, ``dt ~ logU(1e-3, 1e-1)`` (floor 1e-4)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d)):
                m.reset_parameters()
        HV = self.num_v_heads
        with torch.no_grad():
            # fla draws A in [0, 16); the floor only keeps log(A) finite for a (probability ~1e-7) draw of 0.
            A = torch.empty(HV, dtype=torch.float32).uniform_(0, 16).clamp_(min=1e-6)
            self.A_log.copy_(torch.log(A))
            dt_min, dt_max, dt_floor = 1e-3, 0.1, 1e-4
            dt = torch.exp(torch.rand(HV) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt = dt.clamp(min=dt_floor)
            self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            self.o_norm.weight.fill_(1.0)

    # ----------------------------------------------------------------------------------------------- contract
    def state_size(self, seq_len: int | None = None) -> int:
        rec = self.num_v_heads * self.head_k_dim * self.head_v_dim
        conv = (self.config.conv_size - 1) * self._conv_channels if self.config.use_short_conv else 0
        return rec + conv

    def head_shard_spec(self) -> HeadShardSpec:
        """Heads are independent: the projections, per-head decay / step parameters and the depthwise short convs
        (head-major channels) split by heads; the per-head output norm is replicated; ``o_proj`` row parallel.
        Grouped value heads split with their key head (``num_v_heads`` is a multiple of ``num_heads``)."""
        heads = {f"{n}.weight": 0 for n in ("q_proj", "k_proj", "v_proj", "a_proj", "b_proj")}
        heads.update({"A_log": 0, "dt_bias": 0})
        if self.config.use_gate:
            heads["g_proj.weight"] = 0
        if self.config.use_short_conv:
            for n in ("q_conv1d", "k_conv1d", "v_conv1d"):
                heads[f"{n}.weight"] = 0
                if self.config.conv_bias:
                    heads[f"{n}.bias"] = 0
        return HeadShardSpec(head_params=heads, head_local=("o_norm.weight",), rowwise=("o_proj",),
                             head_attrs=("num_heads", "num_v_heads", "key_dim", "value_dim"))

    @property
    def _conv_channels(self) -> int:
        return 2 * self.key_dim + self.value_dim

    def core_cost(self, n: int, ctx: int, batch: int, elem: int) -> Cost:
        """WY / UT chunked delta rule, chunks of C: per value head and chunk ``C^2 (5 K + 3 V) + 6 C K V`` (``K K^T``,
        the triangular solve, ``Q K^T``, intra-chunk output, state read / write); a decode token is a chunk of 1."""
        H, HV, K, V = self.num_heads, self.num_v_heads, self.head_k_dim, self.head_v_dim
        C = min(self.config.chunk_size, n)
        chunks = math.ceil(n / C)
        flops = chunks * HV * (C * C * (5.0 * K + 3.0 * V) + 6.0 * C * K * V) * batch
        state = HV * K * V
        nbytes = FP32_BYTES * batch * (n * (2 * H * K + 2 * HV * V + 2 * HV) + state * (2 + chunks))
        return Cost(flops, nbytes, f"delta rule: chunks of C={self.config.chunk_size}")

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"{super().extra_repr()}, head_k_dim={self.head_k_dim}, head_v_dim={self.head_v_dim}, "
            f"v_heads={self.num_v_heads}, conv_size={c.conv_size if c.use_short_conv else None}, "
            f"use_gate={c.use_gate}"
        )

    # ----------------------------------------------------------------------------------------------- forward
    def _forward(self, x, *, layout, positions, state, return_state):
        # `positions` is accepted and ignored: the recurrence is order-aware by itself (no RoPE, as in fla).
        B, T, _ = x.shape
        backend = self.select_backend(x.device)
        st = None if state is None else self._check_state(state, B)
        # 1. projections (under autocast these run in the autocast dtype)
        qkv = torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)  # [B, T, C]
        a, b = self.a_proj(x), self.b_proj(x)  # [B, T, HV]
        gate = self.g_proj(x) if self.config.use_gate else None  # [B, T, HV V]
        if backend.name == "fla":
            o, new_state = self._mix_fla(x, qkv, a, b, gate, st, return_state)
        else:
            # Short conv, delta rule and norm in fp32 (fp64 for fp64 inputs) even under bf16 autocast.
            with torch.autocast(device_type=x.device.type, enabled=False):
                o, new_state = self._mix_torch(x, qkv, a, b, gate, st, return_state, backend)
        y = self.o_proj(o.reshape(B, T, self.value_dim))
        return y, new_state

    def _check_state(self, state, B: int) -> GatedDeltaNetState:
        if not isinstance(state, GatedDeltaNetState):
            raise TypeError(
                f"{self.name}: state must be the GatedDeltaNetState returned with return_state=True, "
                f"got {type(state).__name__}"
            )
        rec = (B, self.num_v_heads, self.head_k_dim, self.head_v_dim)
        if not isinstance(state.recurrent, torch.Tensor) or tuple(state.recurrent.shape) != rec:
            got = tuple(state.recurrent.shape) if isinstance(state.recurrent, torch.Tensor) else state.recurrent
            raise ValueError(f"{self.name}: carried recurrent state must be [B, HV, K, V] = {rec}, got {got}")
        if self.config.use_short_conv:
            conv = (B, self.config.conv_size - 1, self._conv_channels)
            if not isinstance(state.conv, torch.Tensor) or tuple(state.conv.shape) != conv:
                got = tuple(state.conv.shape) if isinstance(state.conv, torch.Tensor) else state.conv
                raise ValueError(f"{self.name}: carried conv state must be [B, W - 1, C] = {conv}, got {got}")
        elif state.conv is not None:
            raise ValueError(f"{self.name}: carried conv state must be None when use_short_conv=False")
        return state

    def _conv_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The three depthwise kernels as one ``[C, W]`` weight (+ ``[C]`` bias), channel order q|k|v."""
        convs = (self.q_conv1d, self.k_conv1d, self.v_conv1d)
        w = torch.cat([m.weight.squeeze(1) for m in convs], dim=0)
        bias = torch.cat([m.bias for m in convs], dim=0) if self.config.conv_bias else None
        return w, bias

    def _split_heads(self, qkv: torch.Tensor):
        B, T, _ = qkv.shape
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        H, HV = self.num_heads, self.num_v_heads
        return (q.reshape(B, T, H, self.head_k_dim), k.reshape(B, T, H, self.head_k_dim),
                v.reshape(B, T, HV, self.head_v_dim))

    def _mix_torch(self, x, qkv, a, b, gate, st, return_state, backend):
        """Steps 2-4 in PyTorch: returns ``(o [B, T, HV, V] in x's dtype, new state or None)``."""
        c = self.config
        acc = acc_dtype(x)
        qkv = qkv.to(acc)
        conv_state = None
        if c.use_short_conv:
            W = c.conv_size
            w, bias = self._conv_weight()
            prev = st.conv.to(acc) if st is not None else None  # [B, W - 1, C] left context (None: zeros)
            conv_state = conv_tail(qkv, prev, W) if return_state else None
            qkv = F.silu(causal_depthwise_conv1d(qkv, w, bias, prev))
        else:
            qkv = F.silu(qkv)
        q, k, v = self._split_heads(qkv)
        q, k = _l2norm(q), _l2norm(k)
        g = -self.A_log.to(acc).exp() * F.softplus(a.to(acc) + self.dt_bias.to(acc))  # log decay <= 0
        beta = torch.sigmoid(b.to(acc)) * (2.0 if c.allow_neg_eigval else 1.0)
        h0 = None if st is None else st.recurrent.to(acc)
        kw = {} if backend.reference else {"chunk_size": c.chunk_size}  # the naive twin is a per-token loop
        o, S = backend.fn(q, k, v, g, beta, initial_state=h0, output_final_state=return_state, **kw)
        o = self.o_norm(o, None if gate is None else gate.reshape_as(o))
        new_state = GatedDeltaNetState(conv_state, S) if return_state else None
        return o.to(x.dtype), new_state

    def _mix_fla(self, x, qkv, a, b, gate, st, return_state):
        """Steps 2-4 with fla's kernels (as ``fla.layers.GatedDeltaNet.forward``)."""
        c = self.config
        fla = external.fla_gated_delta_rule()
        on_cpu = x.device.type == "cpu"
        if on_cpu:
            patch_triton_interpreter()
            # bf16 is computed wrongly by the interpreter: run the kernels in fp32 there (tests only).
            qkv, a, b = (t.float() if t.dtype == torch.bfloat16 else t for t in (qkv, a, b))
            gate = gate.float() if gate is not None and gate.dtype == torch.bfloat16 else gate
        conv_state = None
        if c.use_short_conv:
            W = c.conv_size
            w, bias = self._conv_weight()
            # fla's conv cache is [B, C, W] holding the last W inputs (oldest first); only the last W - 1 are read.
            h0 = None if st is None else F.pad(st.conv.to(qkv.dtype).transpose(1, 2), (1, 0))
            qkv, final = fla.causal_conv1d(x=qkv, weight=w, bias=bias, initial_state=h0,
                                           output_final_state=return_state, activation="silu", backend="triton")
            if return_state:
                conv_state = final[:, :, 1:].transpose(1, 2)
        else:
            qkv = F.silu(qkv)
        q, k, v = self._split_heads(qkv)
        h0 = None if st is None else st.recurrent.float()
        kw = dict(initial_state=h0, output_final_state=return_state, use_qk_l2norm_in_kernel=True,
                  use_gate_in_kernel=True, A_log=self.A_log, dt_bias=self.dt_bias,
                  use_beta_sigmoid_in_kernel=True, allow_neg_eigval=c.allow_neg_eigval)
        if not torch.is_grad_enabled() and x.shape[1] <= _FUSED_RECURRENT_MAX_T:
            o, S = fla.fused_recurrent(q, k, v, g=a, beta=b, **kw)
        else:
            o, S = fla.chunk(q, k, v, g=a, beta=b, **kw)
        if gate is not None:
            o = fla.rms_norm_gated(o, gate.reshape_as(o), self.o_norm.weight, None,
                                   activation=c.output_gate_activation, eps=c.norm_eps)
        else:
            o = self.o_norm(o.float()).to(o.dtype)
        new_state = GatedDeltaNetState(conv_state, S.float()) if return_state else None
        return o.to(x.dtype) if on_cpu else o, new_state
