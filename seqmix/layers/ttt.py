"""TTT-Linear and TTT-MLP mixers (Sun et al. 2024, arXiv 2407.04620; video form: Dalal et al. 2025,
arXiv 2504.05298, "One-Minute Video Generation with Test-Time Training").

Per head, the hidden state is a small model trained at test time (see :mod:`seqmix.ops.ttt`):

* TTT-Linear: ``f(x) = x W1 + b1`` (``W1: K x K``), base inner learning rate 1.0.
* TTT-MLP: ``f(x) = GELU_tanh(x W1 + b1) W2 + b2`` (``W1: K x 4K``, ``W2: 4K x K``), base inner lr 0.1.

Layer: own Q/K/V/O projections (with bias); Q and K L2-normalised per head (then 3D RoPE when ``positions`` are
given); target ``r = LN_t(v - k)``; per-head per-token inner lr ``eta = base_lr * sigmoid(x . w_h + c_h) / K``;
read-out ``q + LN(f_W(q))`` per head; post-LayerNorm (eps 1e-6) over all heads; output projection.

Parameters (dim D, H heads, head dim K, inner width F): ``4 (D H K + H K)`` projections (O: ``H K D + D``),
``H (D + 1)`` lr gate, ``2 H K`` inner LN, ``2 H K`` post-norm, plus the initial inner model:
``H (K F + F)`` (linear, F = K) or ``H (K F + F + F K + K)`` (MLP). At the paper's D = 3072, H = 48, K = 64:
TTT-MLP ~ 39.4M parameters per layer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from seqmix.ops import acc_dtype
from seqmix.ops import ttt as ttt_ops
from seqmix.ops.rope import apply_rope, rope_angles

from .base import Backend, Mixer, MixerConfig, register, triton_device_reason
from .cost import FP32_BYTES, Cost, ttt_minibatch_flops
from .sharding import HeadShardSpec

logger = logging.getLogger(__name__)

__all__ = ["TTTConfig", "TTTLinear", "TTTMLP", "TTTState"]




class TTTState(NamedTuple):
    """Carried state of a causal TTT layer between calls.

    ``weights``: the inner model at the last mini-batch boundary (tuple of ``[B, H, ...]`` fp32 tensors).
    ``pending_k, pending_r``: ``[B, H, n, K]`` and ``pending_eta``: ``[B, H, n]`` for the ``0 <= n < N`` tokens
    of the unfinished mini-batch; the next call re-feeds them (their outputs were already emitted), which is
    exact because a causal read-out inside a mini-batch depends only on earlier tokens of that mini-batch.
    """

    weights: tuple[torch.Tensor, ...]
    pending_k: torch.Tensor
    pending_r: torch.Tensor
    pending_eta: torch.Tensor
    layer: str = ""  # registry name of the producing layer (set by Mixer.forward; see seqmix.layers.base)


@dataclass(kw_only=True)
class TTTConfig(MixerConfig):
    """Settings shared by TTT-Linear and TTT-MLP.

    Attributes:
        causal: causal (language) form with token-position weighting inside a mini-batch, or the non-causal
            (video) form where every token of a mini-batch is read out with the weights at its end.
        mini_batch_size: tokens per inner gradient step (paper text: 64; public training configs: 64 for
            TTT-MLP, 16 for TTT-Linear). Sequence lengths need not be a multiple of it.
        head_dim: per-head width K; default ``dim // num_heads``.
        base_lr: base inner learning rate (paper: 1.0 TTT-Linear, 0.1 TTT-MLP); ``None`` = the paper's value.
        ln_eps: eps of the inner per-head LayerNorm (and of the target's std).
        post_norm_eps: eps of the post-LayerNorm over all heads.
        rope_theta: RoPE base used when ``positions`` are passed to ``forward``.
        scan_checkpoint_group: if > 0, recompute the scan in backward in groups of this many mini-batches
            (``"triton"``: mini-batches between saved states; 0 picks ~sqrt(#mini-batches) there).
        backend: ``"auto"``, ``"triton"`` (fused kernels of :mod:`seqmix.kernels.ttt_triton`; auto on CUDA for
            head dims 16/32/64/128), ``"torch"`` (dual form) or ``"naive"`` (reference loop). TTT-MLP also has
            ``"tp"`` (:mod:`seqmix.kernels.ttt_tp`, Hopper cluster kernel; explicit only, not yet validated on a
            GPU; non-causal, K = 64, mini-batch 64; elsewhere it degrades to the next backend with one warning).
    """

    causal: bool = False
    mini_batch_size: int = 64
    head_dim: int | None = None
    base_lr: float | None = None
    ln_eps: float = 1e-8
    post_norm_eps: float = 1e-6
    rope_theta: float = 1e4
    scan_checkpoint_group: int = 0


def _triton_supports(layer: "_TTTBase", device: torch.device, dtype: torch.dtype, shapes) -> str | None:
    reason = triton_device_reason(layer, "triton", device, dtype, "the TTT Triton kernels")
    if reason:
        return reason
    try:  # imported here, never at `import seqmix` (TRITON_INTERPRET must be set before @triton.jit runs)
        from seqmix.kernels.ttt_triton import check_supported
    except ImportError as e:
        return f"cannot import the TTT Triton kernels ({e})"
    # The layer hands the scan fp32 inputs (see _project), whatever the parameter dtype.
    K, F_ = layer.W1.shape[-2:]
    return check_supported(layer.kind, K, F_, layer.config.mini_batch_size, torch.float32, device)


def _ttt_scan_triton(*args, **kwargs):
    from seqmix.kernels.ttt_triton import ttt_scan_triton

    return ttt_scan_triton(*args, **kwargs)


def _tp_supports(layer: "_TTTBase", device: torch.device, dtype: torch.dtype, shapes) -> str | None:
    if layer.config.backend != "tp":
        return "the tensor-parallel kernel is opt-in (backend='tp') until validated on a GPU"
    from seqmix.kernels.ttt_tp import check_supported

    # The layer hands the scan fp32 inputs (see _project), whatever the parameter dtype.
    K, F_ = layer.W1.shape[-2:]
    return check_supported(layer.kind, K, F_, layer.config.mini_batch_size, layer.causal, torch.float32, device)


def _ttt_scan_tp(*args, **kwargs):
    from seqmix.kernels.ttt_tp import ttt_scan_tp

    return ttt_scan_tp(*args, **kwargs)


class _TTTBase(Mixer):
    kind: ClassVar[str]
    default_base_lr: ClassVar[float]
    # Every backend runs the same scan signature (seqmix.ops.ttt.ttt_scan).
    backend_table = (
        Backend("triton", _ttt_scan_triton, _triton_supports),
        Backend("torch", ttt_ops.ttt_scan),
        Backend("naive", ttt_ops.ttt_scan_naive, reference=True),
    )
    causal_modes = (False, True)
    takes_positions = True
    gates = ("tests/test_ttt.py",)
    backend_gates = {"triton": ("tests/test_ttt_triton.py",)}
    state_knob = "head_dim"
    param_knob = "head_dim"

    def __init__(self, dim: int, num_heads: int, config: TTTConfig):
        super().__init__(dim, num_heads, config)
        c = config
        if c.head_dim is None and dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}; pass head_dim explicitly")
        K = c.head_dim if c.head_dim is not None else dim // num_heads
        if not isinstance(K, int) or K <= 0:
            raise ValueError(f"head_dim must be a positive int, got {K!r}")
        if not isinstance(c.mini_batch_size, int) or c.mini_batch_size < 1:
            raise ValueError(f"mini_batch_size must be a positive int, got {c.mini_batch_size!r}")
        if c.scan_checkpoint_group < 0:
            raise ValueError(f"scan_checkpoint_group must be >= 0, got {c.scan_checkpoint_group}")
        self.head_dim = K
        self.base_lr = self.default_base_lr if c.base_lr is None else float(c.base_lr)
        H, HK = num_heads, num_heads * K
        self.wq = nn.Linear(dim, HK)
        self.wk = nn.Linear(dim, HK)
        self.wv = nn.Linear(dim, HK)
        self.wo = nn.Linear(HK, dim)
        # Per-head inner learning-rate gate, computed from the layer input x.
        self.lr_weight = nn.Parameter(torch.empty(H, dim))
        self.lr_bias = nn.Parameter(torch.empty(H))
        # Per-head LN of the inner loss, the target and the read-out.
        self.ttt_norm_weight = nn.Parameter(torch.empty(H, K))
        self.ttt_norm_bias = nn.Parameter(torch.empty(H, K))
        self.post_norm = nn.LayerNorm(HK, eps=c.post_norm_eps)
        self._init_inner(H, K)
        self.reset_parameters()

    def _init_inner(self, H: int, K: int) -> None:  # pragma: no cover - overridden
        raise TypeError("subclass must define the inner model")

    def reset_parameters(self) -> None:
        for lin in (self.wq, self.wk, self.wv, self.wo):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)
        nn.init.normal_(self.lr_weight, std=0.02)
        nn.init.zeros_(self.lr_bias)
        nn.init.ones_(self.ttt_norm_weight)
        nn.init.zeros_(self.ttt_norm_bias)
        self.post_norm.reset_parameters()
        for name, p in self.inner_params().items():
            if name.startswith("W"):
                nn.init.normal_(p, std=0.02)
            else:
                nn.init.zeros_(p)

    def head_shard_spec(self) -> HeadShardSpec:
        """Heads are independent up to the post-norm over all ``H K`` features: Q/K/V, the learning-rate gate, the
        inner-loss LN and the inner model split by heads; the post-norm's input is gathered, so it and ``wo`` run
        replicated."""
        heads = {f"{n}.{p}": 0 for n in ("wq", "wk", "wv") for p in ("weight", "bias")}
        heads.update({n: 0 for n in ("lr_weight", "lr_bias", "ttt_norm_weight", "ttt_norm_bias", *self.inner_params())})
        return HeadShardSpec(head_params=heads, gather_inputs=("post_norm",))

    def inner_params(self) -> dict[str, nn.Parameter]:
        """The learnable initial inner model, ``{"W1": [H, K, F], "b1": [H, 1, F], ...}``."""
        names = ("W1", "b1") if self.kind == "linear" else ("W1", "b1", "W2", "b2")
        return {n: getattr(self, n) for n in names}

    def state_size(self, seq_len: int | None = None) -> int:
        return sum(p.numel() for p in self.inner_params().values())

    def core_cost(self, n: int, ctx: int, batch: int, elem: int) -> Cost:
        """Per head and mini-batch of ``s`` tokens :func:`~seqmix.layers.cost.ttt_minibatch_flops` in the form the
        backend computes (``triton``: kernel form, else torch form), plus the learning-rate gate ``2 D H`` per
        token. A causal call after ``p`` pending tokens re-feeds them (as the layer does)."""
        c = self.config
        H, K, b = self.num_heads, self.head_dim, c.mini_batch_size
        F = K if self.kind == "linear" else c.mlp_expansion * K
        state = sum(p.numel() for p in self.inner_params().values())  # H x (weights + biases)
        form = "kernel" if self.backend == "triton" else "torch"
        pending = ctx % b if self.causal else 0
        m = pending + n  # tokens the scan runs over (pending ones are re-fed)
        full, rem = divmod(m, b)
        per_head = full * ttt_minibatch_flops(self.kind, b, K, F, self.causal, form)
        if rem:
            per_head += ttt_minibatch_flops(self.kind, rem, K, F, self.causal, form)
        flops = H * batch * per_head + 2.0 * self.dim * H * n * batch  # + lr gate
        mbs = full + (1 if rem else 0)
        # q, k, r read (+ eta), z written; state read once, one state per mini-batch written (fp32)
        nbytes = FP32_BYTES * batch * (H * m * (3 * K + 1) + H * n * K + state * (1 + mbs))
        return Cost(flops, nbytes, f"ttt[{self.kind},{'dual' if self.causal else 'primal'},{form}]: "
                                   f"per mini-batch of b={b}")

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"{super().extra_repr()}, head_dim={self.head_dim}, mini_batch_size={c.mini_batch_size}, "
            f"base_lr={self.base_lr}"
        )

    # ------------------------------------------------------------------------------------------------ forward
    def _project(self, x: torch.Tensor, positions: torch.Tensor | None):
        """x [B, T, D] -> q, k, r [B, H, T, K] and eta [B, H, T], in fp32 (fp64 for fp64 inputs)."""
        B, T, _ = x.shape
        H, K = self.num_heads, self.head_dim
        acc = acc_dtype(x)
        q, k, v = (proj(x).view(B, T, H, K) for proj in (self.wq, self.wk, self.wv))  # autocast applies here
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._prepare(x, q, k, v, positions, acc)

    def _prepare(self, x, q, k, v, positions, acc):
        B, T, H, K = q.shape
        q, k, v = F.normalize(q.to(acc), dim=-1), F.normalize(k.to(acc), dim=-1), v.to(acc)
        if positions is not None:
            if positions.shape[-2 if positions.shape[-1] == 3 and positions.dim() >= 2 else -1] != T:
                raise ValueError(f"{self.name}: positions {tuple(positions.shape)} do not match T={T}")
            ang = rope_angles(positions.to(x.device), K, self.config.rope_theta)
            q, k = apply_rope(q, ang), apply_rope(k, ang)
        gate = torch.einsum("btd,hd->bth", x.to(acc), self.lr_weight.to(acc)) + self.lr_bias.to(acc)
        eta = (self.base_lr / K) * torch.sigmoid(gate)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        r = ttt_ops.reconstruction_target(v, k, self.ttt_norm_weight.to(acc), self.ttt_norm_bias.to(acc),
                                          self.config.ln_eps)
        return q, k, r, eta.transpose(1, 2)

    def _forward(self, x, *, layout, positions, state, return_state):
        if layout is not None:
            raise ValueError(f"{self.name}: takes no layout (the backbone reorders tokens); got {type(layout).__name__}")
        c: TTTConfig = self.config
        B, T, _ = x.shape
        scan = self.select_backend(x.device).fn
        acc = acc_dtype(x)
        q, k, r, eta = self._project(x, positions)
        # Inner state, gradients and LN statistics in fp32 (fp64 for fp64 inputs) even under bf16 autocast.
        with torch.autocast(device_type=x.device.type, enabled=False):
            ln_w, ln_b = self.ttt_norm_weight.to(acc), self.ttt_norm_bias.to(acc)
            if state is not None:
                weights, n_pend = self._check_state(state, B, x.device, acc), state.pending_k.shape[2]
                k_all = torch.cat([state.pending_k, k], dim=2)
                r_all = torch.cat([state.pending_r, r], dim=2)
                eta_all = torch.cat([state.pending_eta, eta], dim=2)
                # Queries of pending tokens were already read out; any placeholder works (outputs are dropped).
                q_all = torch.cat([state.pending_k, q], dim=2)
            else:
                weights = ttt_ops.init_state(tuple(self.inner_params().values()), B, acc)
                n_pend, q_all, k_all, r_all, eta_all = 0, q, k, r, eta
            z, boundary = scan(
                q_all, k_all, r_all, eta_all, ln_w, ln_b, weights,
                kind=self.kind, causal=c.causal, mini_batch_size=c.mini_batch_size, eps=c.ln_eps,
                checkpoint_group=c.scan_checkpoint_group,
            )
            z = z[:, :, n_pend:]
            y = q + ttt_ops.head_layer_norm(z, ln_w, ln_b, c.ln_eps)  # [B, H, T, K]
            # explicit width, not -1: a batch of 0 has no elements to infer it from
            y = self.post_norm(y.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim).to(self.post_norm.weight.dtype))
        y = self.wo(y)
        new_state = None
        if return_state:
            if not c.causal:
                raise ValueError(f"{self.name}: return_state needs causal=True (the non-causal form has no carry)")
            n_keep = k_all.shape[2] % c.mini_batch_size
            tail = slice(k_all.shape[2] - n_keep, k_all.shape[2])
            new_state = TTTState(boundary, k_all[:, :, tail], r_all[:, :, tail], eta_all[:, :, tail])
        return y, new_state

    def _check_state(self, state, B: int, device: torch.device, acc: torch.dtype) -> tuple[torch.Tensor, ...]:
        if not isinstance(state, TTTState):
            raise TypeError(f"{self.name}: state must be the TTTState returned with return_state=True, got {type(state).__name__}")
        w = state.weights
        expect = [(B, *p.shape) for p in self.inner_params().values()]
        if [tuple(t.shape) for t in w] != expect:
            raise ValueError(f"{self.name}: carried state shapes {[tuple(t.shape) for t in w]} != expected {expect}")
        return tuple(t.to(device=device, dtype=acc) for t in w)


@register("ttt_linear")
class TTTLinear(_TTTBase):
    """TTT-Linear: the hidden state is a per-head linear model ``x W1 + b1`` (``K x K``)."""

    kind = "linear"
    default_base_lr = 1.0
    small_config = {"mini_batch_size": 4}

    @dataclass(kw_only=True)
    class Config(TTTConfig):
        mini_batch_size: int = 16

    def _init_inner(self, H: int, K: int) -> None:
        self.W1 = nn.Parameter(torch.empty(H, K, K))
        self.b1 = nn.Parameter(torch.empty(H, 1, K))


@register("ttt_mlp")
class TTTMLP(_TTTBase):
    """TTT-MLP: the hidden state is a per-head 2-layer MLP ``GELU_tanh(x W1 + b1) W2 + b2`` (``K -> eK -> K``)."""

    kind = "mlp"
    default_base_lr = 0.1
    small_config = {"mini_batch_size": 4, "mlp_expansion": 2}
    # "tp": the on-chip tensor-parallel Hopper kernel, explicit only until a committed GPU result validates it.
    backend_table = (Backend("tp", _ttt_scan_tp, _tp_supports), *_TTTBase.backend_table)
    backend_gates = {**_TTTBase.backend_gates, "tp": ("tests/test_ttt_tp.py",)}

    @dataclass(kw_only=True)
    class Config(TTTConfig):
        """TTT-MLP settings; see :class:`TTTConfig`. ``mlp_expansion``: inner hidden width / head dim (paper: 4)."""

        mini_batch_size: int = 64
        mlp_expansion: int = 4

    def _init_inner(self, H: int, K: int) -> None:
        e = self.config.mlp_expansion
        if not isinstance(e, int) or e < 1:
            raise ValueError(f"mlp_expansion must be a positive int, got {e!r}")
        self.W1 = nn.Parameter(torch.empty(H, K, e * K))
        self.b1 = nn.Parameter(torch.empty(H, 1, e * K))
        self.W2 = nn.Parameter(torch.empty(H, e * K, K))
        self.b2 = nn.Parameter(torch.empty(H, 1, K))
