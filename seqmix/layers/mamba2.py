"""Mamba-2 mixer (Dao & Gu 2024, "Transformers are SSMs: Generalized Models and Efficient Algorithms Through
Structured State Space Duality", arXiv 2405.21060), laid out as mamba-ssm's ``Mamba2`` module so its weights load.

Block (inner width ``E = expand * D``, H heads of width ``P = E / H``, G groups of B/C, state dim N)::

    z, xBC, dt = split(in_proj(u))               # [B,T,E], [B,T,E+2GN], [B,T,H]   (mamba-ssm order [z, x, B, C, dt])
    xBC = SiLU(depthwise_causal_conv1d(xBC))     # kernel d_conv, over time
    x, B, C = split(xBC)                         # [B,T,H,P], [B,T,G,N], [B,T,G,N]
    dt = softplus(dt + dt_bias); A = -exp(A_log) # per token and head / per head (scalar decay)
    y = SSD(x, dt, A, B, C) + D x                # seqmix.ops.ssd
    out = out_proj(RMSNorm_G(y * SiLU(z)))       # gated RMSNorm over G groups, norm_before_gate=False

Parameters (names and shapes as mamba-ssm; conv channels ``E_c = E + 2 G N``): ``in_proj.weight [2E + 2GN + H, D]``,
``conv1d.weight [E_c, 1, d_conv]``, ``conv1d.bias [E_c]``, ``dt_bias, A_log, D [H]``, ``norm.weight [E]``,
``out_proj.weight [D, E]`` (``bias=True`` adds in/out projection biases). Count:
``D (2E + 2GN + H) + E_c (d_conv + 1) + 3 H + E + E D``; at D = 3072 with the defaults and 96 heads (E = 6144, N = 128):
57.7M per layer. Recurrent state per sequence: ``H P N + (d_conv - 1) E_c`` elements (SSM state + conv tail).

Heads: as for every seqmix mixer, ``num_heads`` (passed to :func:`seqmix.layers.build`) is the head count H and the
head width follows from it, ``headdim = expand * dim / num_heads``. A mamba-ssm config (which fixes ``headdim``)
maps one to one by passing ``num_heads = expand * d_model / headdim`` (and ``headdim`` too, if wanted); a
``headdim`` that disagrees with ``num_heads`` is rejected.

Backends (``layer.backend``): ``"mamba_ssm"`` (mamba-ssm's fused Triton SSD and causal-conv1d if importable; CUDA),
``"fla"`` (fla's ``chunk_simple_gla``; CUDA, or CPU under ``TRITON_INTERPRET=1`` when asked for explicitly),
``"torch"`` (chunked SSD in PyTorch, runs anywhere, fp64 included) and ``"naive"`` (per-token loop, reference).
fp64 inputs always run on ``"torch"`` / ``"naive"`` (the Triton paths do not compute in fp64).

Legend: B batch, T tokens, D model dim, E inner dim, H heads, P head dim, G groups, N state dim, K conv kernel.

References (registry name, task form: public code; the test that equals it on the same weights in fp64):

- mamba2, lm: mamba-ssm's ``ssd_minimal_discrete`` (the SSD reference of ``mamba_ssm.Mamba2``);
  tests/test_mamba2.py::test_matches_mamba_ssd_minimal
- mamba2, lm: ``mamba_ssm.Mamba2``'s parameter names and initialisation;
  tests/test_mamba2.py::test_same_init_and_names_as_mamba_ssm
- mamba2, lm: flash-linear-attention's ``fla.layers.Mamba2`` forward on its weights;
  tests/test_mamba2.py::test_loads_fla_mamba2_weights_and_matches_its_forward
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from seqmix.ops import external
from seqmix.ops import ssd as ssd_ops
from seqmix.ops.conv import causal_depthwise_conv1d, conv_tail
from seqmix.ops.scan import exporting

from .base import Backend, Mixer, MixerConfig, register, triton_device_reason
from .cost import FP32_BYTES, Cost
from .sharding import HeadShardSpec

logger = logging.getLogger(__name__)

__all__ = ["Mamba2", "Mamba2State", "GatedRMSNorm"]


class Mamba2State(NamedTuple):
    """Carried state of a :class:`Mamba2` layer between calls (returned with ``return_state=True``).

    ``conv``: [B, E_c, K - 1] the last ``d_conv - 1`` inputs of the causal conv (pre-activation ``xBC``; zeros before
    the sequence start), in the activations' dtype. ``ssm``: [B, H, P, N] the SSM state after the last token, fp32
    (fp64 for fp64 inputs). mamba-ssm keeps ``conv`` as ``[B, E_c, K]`` (one slot for the incoming token).
    """

    conv: torch.Tensor
    ssm: torch.Tensor
    layer: str = ""  # registry name of the producing layer (set by Mixer.forward; see seqmix.layers.base)


class GatedRMSNorm(nn.Module):
    """``RMSNorm(x * SiLU(z)) * weight`` with the RMS taken over groups of ``group_size`` channels: mamba-ssm's
    ``RMSNorm(norm_before_gate=False, group_size=E / ngroups)`` in PyTorch. Computes in fp32 (fp64 for fp64)."""

    def __init__(self, dim: int, group_size: int, eps: float = 1e-5):
        super().__init__()
        if dim % group_size:
            raise ValueError(f"GatedRMSNorm: dim={dim} is not divisible by group_size={group_size}")
        self.group_size = group_size
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x, z: [..., E] -> [..., E] in fp32 (fp64 for fp64 x)."""
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=x.device.type, enabled=False):
            h = x.to(acc) * F.silu(z.to(acc))
            hg = h.unflatten(-1, (-1, self.group_size))  # [..., G, E / G]
            hg = hg * torch.rsqrt(hg.square().mean(dim=-1, keepdim=True) + self.eps)
            return hg.flatten(-2) * self.weight.to(acc)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, group_size={self.group_size}, eps={self.eps}"


def _mamba_ssm_supports(layer: "Mamba2", device: torch.device, dtype: torch.dtype, shapes) -> str | None:
    if dtype == torch.float64:
        return "mamba-ssm's Triton kernels do not compute in float64"
    if device.type != "cuda":
        return f"mamba-ssm's Triton SSD needs a CUDA device (got {device.type})"
    return external.mamba_ssm_unavailable()


def _fla_supports(layer: "Mamba2", device: torch.device, dtype: torch.dtype, shapes) -> str | None:
    return triton_device_reason(layer, "fla", device, dtype, "fla's Triton kernels") or external.fla_unavailable()


@register("mamba2")
class Mamba2(Mixer):
    """Mamba-2 block with mamba-ssm's parameter names, shapes and initialisation (see the module docstring).

    ``num_heads`` is H; the head width is ``P = expand * dim / num_heads`` (``self.headdim``). Always causal; carries
    :class:`Mamba2State` across calls.
    """

    # Every backend runs the same SSD signature (seqmix.ops.ssd.ssd_chunk).
    backend_table = (
        Backend("mamba_ssm", ssd_ops.ssd_mamba, _mamba_ssm_supports),
        Backend("fla", ssd_ops.ssd_fla, _fla_supports),
        Backend("torch", ssd_ops.ssd_chunk),
        Backend("naive", ssd_ops.ssd_naive, reference=True),
    )
    causal_modes = (True,)  # the conv and the scan only look back

    class Tooling(Mixer.Tooling):
        small_config = {"d_state": 8, "expand": 2, "chunk_size": 4}  # HEADS heads of width expand * DIM / HEADS
        gates = ("tests/test_mamba2.py",)
        backend_gates = {
            "fla": ("tests/test_mamba2.py::test_fla_chunk_simple_gla_is_ssd",
                    "tests/test_mamba2.py::test_layer_fla_backend_matches_torch"),
            "mamba_ssm": ("tests/test_mamba2.py::test_mamba_chunk_scan_combined_is_ssd",),
        }
        state_knob = "d_state"  # state H P N + (K-1)(E + 2GN) grows with N
        param_knob = "expand"  # every projection grows with E = expand * D
        bench_quick_config = {"chunk_size": 64, "d_state": 32}
        kernel_test_config = {"d_state": 16, "chunk_size": 16}  # head dim follows num_heads
        sweep_knobs = {"d_state": (32, 128)}

    @dataclass(kw_only=True)
    class Config(MixerConfig):
        """Mamba-2 settings; defaults are mamba-ssm's ``Mamba2`` defaults.

        Attributes:
            d_state: N, SSM state size per head channel.
            d_conv: K, kernel width of the depthwise causal conv over ``xBC``.
            expand: inner width E = expand * dim (E must be an integer divisible by the head count).
            headdim: P, channels per head; default ``E / num_heads``. Given explicitly it must agree with
                ``num_heads`` (``num_heads * headdim == E``).
            ngroups: G, groups of heads sharing B and C (and the RMSNorm groups); must divide H.
            chunk_size: Q, tokens per chunk of the SSD scan (``"torch"`` and ``"mamba_ssm"``; fla uses 64).
            dt_min, dt_max: range of the log-uniform initial step size dt (``dt_bias = softplus^-1(dt)``).
            dt_init_floor: lower clamp of the initial dt.
            A_init_range: range of the uniform initial decay rate ``-A = exp(A_log)``.
            norm_eps: eps of the gated RMSNorm.
            conv_init: if set, the conv weight is initialised uniform in ``[-conv_init, conv_init]`` (else PyTorch's
                default Conv1d init).
            bias: bias in ``in_proj`` and ``out_proj``.
            conv_bias: bias in ``conv1d``.
            backend: ``"auto"``, ``"mamba_ssm"``, ``"fla"``, ``"torch"`` or ``"naive"`` (see the module docstring).
        """

        d_state: int = 128
        d_conv: int = 4
        expand: float = 2
        headdim: int | None = None
        ngroups: int = 1
        chunk_size: int = 256
        dt_min: float = 0.001
        dt_max: float = 0.1
        dt_init_floor: float = 1e-4
        A_init_range: tuple[float, float] = (1.0, 16.0)
        norm_eps: float = 1e-5
        conv_init: float | None = None
        bias: bool = False
        conv_bias: bool = True

    def __init__(self, dim: int, num_heads: int, config: "Mamba2.Config"):
        super().__init__(dim, num_heads, config)
        c = config
        self._validate(c)
        d_inner = c.expand * dim
        if abs(d_inner - round(d_inner)) > 1e-9:
            raise ValueError(f"mamba2: expand * dim = {c.expand} * {dim} = {d_inner} must be an integer")
        d_inner = int(round(d_inner))
        divisors = [p for p in range(1, d_inner + 1) if d_inner % p == 0]
        if c.headdim is None:  # the head count is asked for; the head width follows
            if d_inner % num_heads:
                raise ValueError(
                    f"mamba2: expand * dim = {d_inner} is not divisible by num_heads={num_heads}; num_heads must be "
                    f"one of {divisors} (or change expand)"
                )
            headdim = d_inner // num_heads
        else:
            if d_inner % c.headdim:
                raise ValueError(
                    f"mamba2: expand * dim = {d_inner} is not divisible by headdim={c.headdim}; headdim must be one of "
                    f"{divisors} (or change expand)"
                )
            headdim = c.headdim
            if d_inner // headdim != num_heads:
                raise ValueError(
                    f"mamba2: num_heads={num_heads} and headdim={headdim} disagree: num_heads * headdim must equal "
                    f"expand * dim = {d_inner}; pass num_heads={d_inner // headdim}, or leave headdim unset "
                    f"(then headdim = {d_inner} / num_heads)"
                )
        nheads = d_inner // headdim
        if nheads % c.ngroups:
            allowed = [g for g in range(1, nheads + 1) if nheads % g == 0]
            raise ValueError(f"mamba2: ngroups={c.ngroups} must divide the number of heads {nheads}; allowed: {allowed}")
        self.d_inner, self.nheads, self.headdim = d_inner, nheads, headdim
        self.d_state, self.ngroups, self.d_conv = c.d_state, c.ngroups, c.d_conv

        # Created in mamba-ssm's order so that the same seed gives the same initial weights.
        self.in_proj = nn.Linear(dim, d_inner + self.conv_dim + nheads, bias=c.bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, kernel_size=c.d_conv, groups=self.conv_dim,
                                padding=c.d_conv - 1, bias=c.conv_bias)
        if c.conv_init is not None:
            nn.init.uniform_(self.conv1d.weight, -c.conv_init, c.conv_init)
        self.dt_bias = nn.Parameter(self._init_dt_bias())
        self.A_log = nn.Parameter(self._init_A_log())
        self.D = nn.Parameter(torch.ones(nheads))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True  # as mamba-ssm: optimiser recipes skip weight decay on these
        self.norm = GatedRMSNorm(d_inner, group_size=d_inner // c.ngroups, eps=c.norm_eps)
        self.out_proj = nn.Linear(d_inner, dim, bias=c.bias)

    def head_shard_spec(self) -> HeadShardSpec:
        """Split by heads: a rank reads its heads' rows of the fused input projection ``[z | x | B | C | dt]`` and of
        the conv over ``[x | B | C]`` (``segments``: the parameters keep mamba-ssm's layout; B and C by group, a
        group shared by the ranks whose heads read it), and its heads' ``dt_bias``, ``A_log``, ``D``. The gated
        RMSNorm spans a group of heads (all of them with ``ngroups=1``): its inputs are gathered, and the norm and
        ``out_proj`` run replicated, or on token shards under sequence parallelism (both act per token)."""
        E, GN, H, G = self.d_inner, self.ngroups * self.d_state, self.nheads, self.ngroups
        fused = (0, ((E, H), (E, H), (GN, G), (GN, G), (H, H)))
        conv = (0, ((E, H), (GN, G), (GN, G)))
        segments = {"in_proj.weight": fused, "conv1d.weight": conv}
        segments |= {"in_proj.bias": fused} if self.in_proj.bias is not None else {}
        segments |= {"conv1d.bias": conv} if self.conv1d.bias is not None else {}
        return HeadShardSpec(head_params={"dt_bias": 0, "A_log": 0, "D": 0}, segments=segments,
                             gather_inputs=("norm",), tail_end="out_proj",
                             head_attrs=("num_heads", "nheads", "d_inner"),
                             group_attrs=("ngroups",))

    @property
    def conv_dim(self) -> int:
        """Channels of the depthwise conv, ``[x | B | C]``: ``E + 2 G N``."""
        return self.d_inner + 2 * self.ngroups * self.d_state

    @staticmethod
    def _validate(c: "Mamba2.Config") -> None:
        for name in ("d_state", "d_conv", "headdim", "ngroups", "chunk_size"):
            v = getattr(c, name)
            if name == "headdim" and v is None:  # derived from num_heads
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"mamba2: {name} must be a positive int, got {v!r}")
        if not isinstance(c.expand, (int, float)) or c.expand <= 0:
            raise ValueError(f"mamba2: expand must be a positive number, got {c.expand!r}")
        if not 0 < c.dt_min <= c.dt_max:
            raise ValueError(f"mamba2: need 0 < dt_min <= dt_max, got dt_min={c.dt_min}, dt_max={c.dt_max}")
        if not c.dt_init_floor > 0:
            raise ValueError(f"mamba2: dt_init_floor must be > 0, got {c.dt_init_floor}")
        lo_hi = tuple(c.A_init_range)
        if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1]:
            raise ValueError(f"mamba2: A_init_range must be (lo, hi) with 0 < lo <= hi, got {c.A_init_range!r}")
        if not c.norm_eps > 0:
            raise ValueError(f"mamba2: norm_eps must be > 0, got {c.norm_eps}")

    # --------------------------------------------------------------------------------------------- initialisation
    def _init_dt_bias(self) -> torch.Tensor:
        """dt log-uniform in [dt_min, dt_max] (clamped at dt_init_floor); stored as softplus^-1(dt)."""
        c = self.config
        dt = torch.exp(torch.rand(self.nheads) * (math.log(c.dt_max) - math.log(c.dt_min)) + math.log(c.dt_min))
        dt = torch.clamp(dt, min=c.dt_init_floor)
        return dt + torch.log(-torch.expm1(-dt))  # inverse softplus

    def _init_A_log(self) -> torch.Tensor:
        """-A uniform in A_init_range (S4D-real style per-head decay rates), stored as log."""
        return torch.log(torch.empty(self.nheads, dtype=torch.float32).uniform_(*self.config.A_init_range))

    def reset_parameters(self) -> None:
        """Re-draw every parameter as at construction (same order, so the same seed gives the same weights)."""
        c = self.config
        self.in_proj.reset_parameters()
        self.conv1d.reset_parameters()
        if c.conv_init is not None:
            nn.init.uniform_(self.conv1d.weight, -c.conv_init, c.conv_init)
        with torch.no_grad():
            self.dt_bias.copy_(self._init_dt_bias())
            self.A_log.copy_(self._init_A_log())
            self.D.fill_(1.0)
            self.norm.weight.fill_(1.0)
        self.out_proj.reset_parameters()

    # ------------------------------------------------------------------------------------------------- contract
    def state_size(self, seq_len: int | None = None) -> int:
        return self.nheads * self.headdim * self.d_state + (self.d_conv - 1) * self.conv_dim

    def core_cost(self, n: int, ctx: int, batch: int, elem: int) -> Cost:
        """SSD in chunks of Q: per head and chunk ``2 Q^2 (N + P) + 4 Q P N`` (intra-chunk scores and outputs, chunk
        states, state read-out); one decode token (recurrent step) ``4 P N``."""
        H, P, N, G = self.nheads, self.headdim, self.d_state, self.ngroups
        Q = self.config.chunk_size
        state = H * P * N
        if n == 1 and ctx:
            flops = 4.0 * H * P * N * batch
            chunks = 0
        else:
            chunks = math.ceil(n / Q)
            flops = chunks * H * (2.0 * Q * Q * (N + P) + 4.0 * Q * P * N) * batch
        nbytes = FP32_BYTES * batch * (n * (2 * H * P + H + 2 * G * N) + state * (2 + chunks))
        return Cost(flops, nbytes, f"ssd: chunks of Q={Q}")

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"{super().extra_repr()}, d_inner={self.d_inner}, headdim={self.headdim}, d_state={self.d_state}, "
            f"ngroups={self.ngroups}, d_conv={self.d_conv}, chunk_size={c.chunk_size}"
        )

    # --------------------------------------------------------------------------------------------------- forward
    def _forward(self, x, *, layout, positions, state, return_state):
        # positions are ignored: Mamba-2 is position-free (order comes from the scan itself).
        b, T, _ = x.shape
        E, H, P, G, N = self.d_inner, self.nheads, self.headdim, self.ngroups, self.d_state
        backend = self.select_backend(x.device)
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        conv_state, ssm_state = self._check_state(state, b, x.device, acc)

        # 1. Input projection, mamba-ssm order [z, xBC, dt].
        z, xBC, dt = torch.split(self.in_proj(x), [E, self.conv_dim, H], dim=-1)

        # 2. Depthwise causal conv over time (+ SiLU), continuing from the carried tail of earlier inputs.
        xBC, new_conv = self._conv(xBC, conv_state, backend.name, return_state)
        xs, Bm, Cm = torch.split(xBC, [E, G * N, G * N], dim=-1)

        # 3. Discretisation parameters in fp32 (fp64): exp(A_log) could overflow fp16, softplus needs the precision.
        with torch.autocast(device_type=x.device.type, enabled=False):
            dt = F.softplus(dt.to(acc) + self.dt_bias.to(acc))  # [B, T, H]
            A = -torch.exp(self.A_log.to(acc))  # [H]
            # 4. SSD scan (+ D skip). A single decode token takes the recurrent step: no chunk padding needed.
            # (the torch backend's one-token call is the recurrent step of its naive twin)
            scan = ssd_ops.ssd_naive if backend.name == "torch" and not exporting() and T == 1 else backend.fn
            y, h = scan(
                xs.reshape(b, T, H, P), dt, A, Bm.reshape(b, T, G, N), Cm.reshape(b, T, G, N),
                chunk_size=self.config.chunk_size, D=self.D, initial_state=ssm_state,
                output_final_state=return_state,
            )
            # 5. Gated RMSNorm (norm(y * SiLU(z)), groups of E / G channels) in fp32.
            y = self.norm(y.reshape(b, T, E), z)
        out = self.out_proj(y.to(x.dtype))  # autocast (if on) applies to the projection
        new_state = Mamba2State(new_conv, h.to(acc)) if return_state else None
        return out, new_state

    def _conv(self, xBC: torch.Tensor, conv_state: torch.Tensor | None, backend: str, return_state: bool):
        """xBC: [B, T, E_c] -> (SiLU(causal depthwise conv) [B, T, E_c], new conv tail [B, E_c, K-1] or None)."""
        # mamba-ssm keeps the conv state channel-first; the conv runs time-major, in the projection's own layout
        # (a transposed view would make every elementwise op strided)
        history = None if conv_state is None else conv_state.to(xBC.dtype).transpose(1, 2)  # [B, K-1, E_c]
        tail = conv_tail(xBC, history, self.d_conv).transpose(1, 2) if return_state else None  # [B, E_c, K-1]
        fn = external.causal_conv1d_fn() if conv_state is None and backend == "mamba_ssm" and xBC.is_cuda else None
        if fn is not None:
            w, bias = self.conv1d.weight.squeeze(1).to(xBC.dtype), self.conv1d.bias
            y = fn(xBC.transpose(1, 2).contiguous(), w, None if bias is None else bias.to(xBC.dtype),
                   activation="silu")
            return y.transpose(1, 2), tail
        return F.silu(causal_depthwise_conv1d(xBC, self.conv1d.weight[:, 0], self.conv1d.bias, history)), tail

    def _check_state(self, state, b: int, device: torch.device, acc: torch.dtype):
        if state is None:
            return None, None
        if not isinstance(state, Mamba2State):
            raise TypeError(
                f"{self.name}: state must be the Mamba2State returned with return_state=True, got {type(state).__name__}"
            )
        want_conv, want_ssm = (b, self.conv_dim, self.d_conv - 1), (b, self.nheads, self.headdim, self.d_state)
        if tuple(state.conv.shape) != want_conv or tuple(state.ssm.shape) != want_ssm:
            raise ValueError(
                f"{self.name}: carried state shapes conv={tuple(state.conv.shape)}, ssm={tuple(state.ssm.shape)}; "
                f"expected conv={want_conv}, ssm={want_ssm}"
            )
        return state.conv.to(device), state.ssm.to(device=device, dtype=acc)

