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

Variants (``variant``), each the published form for its task; the default follows ``causal``:

* ``"video"`` (default when ``causal=False``): the layer above, as the public ttt-video-dit code (the DiT's form).
* ``"lm"`` (default when ``causal=True``): the causal layer of the TTT language-model code (ttt-lm-pytorch; Zoology's
  TTT mixer is a copy of it), the form of every language task (MQAR, the causal LM): Q/K/V/O without bias and
  without L2 normalisation of Q/K; 1D RoPE on the position modulo the mini-batch size; raw target ``r = v - k``;
  learnable token-index weights ``w_i = max(1/(i+1) + d_i, 0)`` (``d``: ``token_weight_offset [N]``, init 0) in
  the step sizes ``E[i, j] = w_i eta_j``; inner LN eps 1e-6; optional output gate
  ``GELU_tanh(x W_g) * post_norm(.)`` before the output projection (``output_gate``, ``H K D`` more parameters).
* ``"video_causal"`` (opt-in by name; seqmix only, no public reference): the video layer made causal with the
  language code's fixed ``1/(i+1)`` token weighting. The causal Triton kernels implement it. With unit-norm Q and
  K every context token enters its read-out with weight ~ ``eta (q.k_j + 1)``, so a matching key stands out by
  at most ~2:1: it stays at chance on MQAR where ``"lm"`` reaches 0.99 (README, MQAR).
  Optional short convolutions (``qk_conv`` taps): one shared Q/K projection followed by a causal depthwise
  convolution (with bias) each for Q and K (the code's ``share_qk``; ``wk`` is then absent, ``conv_q`` /
  ``conv_k`` added, ``2 H K (taps + 1) - H K D`` parameters more). The code's block-level convolution
  (``pre_conv``: RMSNorm, causal depthwise convolution, residual) corresponds to
  :class:`seqmix.backbones.lm.LMConfig`'s ``short_conv`` (without the RMSNorm).

References (registry name, task form: public code; the test that equals it on the same weights in fp64):

- ttt_linear / ttt_mlp, video: ttt-video-dit (``ttt/models/ssm/ttt_layer.py``, its DiT's sequence-modelling block);
  tests/test_ttt_variants.py::test_public_dit_checkpoint_loads_into_segmented_dit
- ttt_linear, video: ttt-video-dit's TTT-Linear mini-batch equations (``ops/ttt_linear.py``);
  tests/test_ttt_variants.py::test_rowwise_rates_equal_public_minibatch_equations
- ttt_linear / ttt_mlp, lm: ttt-lm-pytorch's causal TTT layer (Zoology's TTT mixer is a copy);
  tests/test_ttt_variants.py::test_lm_variant_matches_public_formulas
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

__all__ = ["TTTConfig", "TTTLinear", "TTTMLP", "TTTState", "VARIANTS"]

#: variant -> what it is (its public reference)
VARIANTS = {
    "video": "the non-causal ttt-video-dit layer (the DiT's form)",
    "lm": "the causal ttt-lm-pytorch layer (the form of language tasks)",
    "video_causal": "the seqmix-only causal hybrid of the video layer (no public reference)",
}




class _Fp32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in (at least) fp32 whatever its parameters' dtype, output in the parameters' dtype (as under
    bf16 autocast). A bf16 LayerNorm on CPU accumulates its weight / bias gradients (sums over B x T tokens) in bf16,
    an error that grows with the token count (1.1% at 154 tokens, 2.8% at 1000); in fp32 what is left is the rounding
    of each summand and of the result, sqrt(2 / 3) 2^-8 ~ 3e-3 at any length (tests/test_ttt.py). A module (not a
    function call) so that tensor parallelism's input hooks still see it; its state dict is LayerNorm's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = torch.promote_types(self.weight.dtype, torch.float32)
        return F.layer_norm(x.to(dt), self.normalized_shape, self.weight.to(dt), self.bias.to(dt),
                            self.eps).to(self.weight.dtype)


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
    qk_conv: torch.Tensor | None = None  # [B, taps - 1, H K] last shared Q/K projections (variant "lm", qk_conv)


@dataclass(kw_only=True)
class TTTConfig(MixerConfig):
    """Settings shared by TTT-Linear and TTT-MLP.

    Attributes:
        variant: ``None`` (default): the published form for ``causal`` - ``"video"`` (ttt-video-dit's layer) when
            non-causal, ``"lm"`` (ttt-lm-pytorch's causal layer) when causal; ``"video_causal"``: the seqmix-only
            hybrid (opt-in); see the module docstring.
        output_gate: ``"lm"`` only: multiply the post-normed read-out by ``GELU_tanh(x W_g)`` (the code's
            ``use_gate``).
        qk_conv: ``"lm"`` only: taps of the causal depthwise convolutions on a shared Q/K projection (the code's
            ``share_qk``, 4 taps there); 0 = separate Q and K projections, no convolution.
        causal: causal (language) form with token-position weighting inside a mini-batch, or the non-causal
            (video) form where every token of a mini-batch is read out with the weights at its end.
        mini_batch_size: tokens per inner gradient step (paper text: 64; public training configs: 64 for
            TTT-MLP, 16 for TTT-Linear). Sequence lengths need not be a multiple of it.
        head_dim: per-head width K; default ``dim // num_heads``.
        base_lr: base inner learning rate; ``None`` = the published form's value: 1.0 TTT-Linear, 0.1 TTT-MLP (video
            code, paper), 1.0 for both in variant ``"lm"`` (ttt-lm-pytorch's config default, Zoology's TTT mixer).
        ln_eps: eps of the inner per-head LayerNorm (and of the target's std); ``None`` = the variant's value
            (1e-8 video, 1e-6 lm).
        post_norm_eps: eps of the post-LayerNorm over all heads.
        rope_theta: RoPE base used when ``positions`` are passed to ``forward``.
        eta_order: variant ``"video"`` only. ``"read"`` (default): each token's inner rate comes from its own input,
            every mini-batch of the read order uses the rates of its own tokens. ``"public"``: the public
            ttt-video-dit arithmetic, needed to reproduce its checkpoints exactly (set by
            :func:`seqmix.backbones.dit.public_ttt.load_public_dit_ttt`): it computes the rates on mini-batches of
            its storage order (all text, then the video) and reorders only the rows of the step-size matrix, so a
            token whose storage and read mini-batches differ weighs its mini-batch with other tokens' rates. The
            two agree exactly when every segment boundary falls on a mini-batch edge (the public 9 s config has
            502 + 13 x 1350 = 18052 = 4 mod 16 tokens in its first segment: they differ there). Reads the layout's
            ``source_index`` (the DiT passes it; without one the read order is the storage order, as for one
            scene); needs ``T`` a multiple of ``mini_batch_size`` and the ``torch`` or ``naive`` backend.
        scan_checkpoint_group: if > 0, recompute the scan in backward in groups of this many mini-batches
            (``"triton"``: mini-batches between saved states; 0 picks ~sqrt(#mini-batches) there).
        backend: ``"auto"``, ``"triton"`` (fused kernels of :mod:`seqmix.kernels.ttt_triton`; auto on CUDA for
            head dims 16/32/64/128), ``"torch"`` (dual form) or ``"naive"`` (reference loop). TTT-MLP also has
            ``"tp"`` (:mod:`seqmix.kernels.ttt_tp`, Hopper cluster kernel; explicit only, not yet validated on a
            GPU; non-causal, K = 64, mini-batch 64; elsewhere it degrades to the next backend with one warning).
    """

    variant: str | None = None
    output_gate: bool = False
    qk_conv: int = 0
    causal: bool = False
    mini_batch_size: int = 64
    head_dim: int | None = None
    base_lr: float | None = None
    ln_eps: float | None = None
    post_norm_eps: float = 1e-6
    rope_theta: float = 1e4
    eta_order: str = "read"
    scan_checkpoint_group: int = 0


def _triton_supports(layer: "_TTTBase", device: torch.device, dtype: torch.dtype, shapes) -> str | None:
    if layer.config.eta_order == "public":
        return "eta_order='public' needs row-wise step sizes, which the Triton kernels do not take: use 'torch'"
    if layer.variant == "lm":
        return ("the TTT Triton kernels implement the video layer (non-causal, or 'video_causal' with fixed 1/(i+1) "
                "token weighting); variant='lm' has learnable token-index weights: use backend 'torch'")
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
    if layer.variant != "video":
        return f"the tensor-parallel kernel implements variant='video' only, got {layer.variant!r}"
    if layer.config.eta_order == "public":
        return "eta_order='public' needs row-wise step sizes, which the tensor-parallel kernel does not take"
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
    # only eta_order="public" reads it (the public code's storage positions); frames and segments are not used
    takes_layout = True

    class Tooling(Mixer.Tooling):
        gates = ("tests/test_ttt.py",)
        backend_gates = {"triton": ("tests/test_ttt_triton.py",)}
        state_knob = "head_dim"
        param_knob = "head_dim"
        bench_quick_config = {"mini_batch_size": 16}
        # The paper checkpoints the scan along the sequence; without it 63 s training does not fit in the DiT
        # benchmark.
        bench_paper_config = {"scan_checkpoint_group": 16}
        # the paper's two base lrs; Zoology's mini-batches
        sweep_knobs = {"base_lr": (0.1, 1.0), "mini_batch_size": (16, 32)}

    def __init__(self, dim: int, num_heads: int, config: TTTConfig):
        super().__init__(dim, num_heads, config)
        c = config
        K = self.resolve_head_dim(c.head_dim)
        if not isinstance(c.mini_batch_size, int) or c.mini_batch_size < 1:
            raise ValueError(f"mini_batch_size must be a positive int, got {c.mini_batch_size!r}")
        if c.scan_checkpoint_group < 0:
            raise ValueError(f"scan_checkpoint_group must be >= 0, got {c.scan_checkpoint_group}")
        variant = c.variant if c.variant is not None else ("lm" if c.causal else "video")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be None (the published form for causal) or one of {list(VARIANTS)}, "
                             f"got {variant!r}")
        if (variant == "video") == bool(c.causal):
            raise ValueError(
                f"variant={variant!r} is {VARIANTS[variant]}: it needs causal={variant != 'video'}"
                + (" (for a causal layer: variant=None or 'lm', the ttt-lm-pytorch form; 'video_causal' opts into "
                   "the seqmix-only hybrid)" if variant == "video" else ""))
        if c.eta_order not in ("read", "public") or (c.eta_order == "public" and variant != "video"):
            raise ValueError(f"eta_order must be 'read' or 'public' (variant='video' only: the public ttt-video-dit "
                             f"arithmetic), got {c.eta_order!r} with variant={variant!r}")
        if c.output_gate and variant != "lm":
            raise ValueError("output_gate belongs to variant='lm' (the language-model code's use_gate)")
        if not isinstance(c.qk_conv, int) or c.qk_conv < 0 or c.qk_conv == 1 or (c.qk_conv and variant != "lm"):
            raise ValueError(f"qk_conv must be 0 (off) or >= 2 taps, with variant='lm'; got {c.qk_conv!r} "
                             f"(variant={variant!r})")
        #: the resolved form: "video", "lm" or "video_causal" (config.variant may be None)
        self.variant = variant
        self.head_dim = K
        # ttt-lm-pytorch's TTTConfig defaults ttt_base_lr to 1.0 for both inner models (Zoology's TTT mixer too);
        # the video code and the TTT paper's text use 0.1 for TTT-MLP.
        default_lr = 1.0 if variant == "lm" else self.default_base_lr
        self.base_lr = default_lr if c.base_lr is None else float(c.base_lr)
        self.ln_eps = c.ln_eps if c.ln_eps is not None else (1e-6 if variant == "lm" else 1e-8)
        H, HK = num_heads, num_heads * K
        bias = variant != "lm"  # the language-model code's projections have no bias
        self.wq = nn.Linear(dim, HK, bias=bias)
        # qk_conv: K shares Q's projection and each gets its own causal depthwise convolution (share_qk)
        self.wk = None if c.qk_conv else nn.Linear(dim, HK, bias=bias)
        self.conv_q = nn.Conv1d(HK, HK, c.qk_conv, groups=HK) if c.qk_conv else None
        self.conv_k = nn.Conv1d(HK, HK, c.qk_conv, groups=HK) if c.qk_conv else None
        self.wv = nn.Linear(dim, HK, bias=bias)
        self.wo = nn.Linear(HK, dim, bias=bias)
        if variant == "lm":
            # learnable offsets d_i of the token-index weights max(1/(i+1) + d_i, 0)
            self.token_weight_offset = nn.Parameter(torch.empty(c.mini_batch_size))
        self.gate_proj = nn.Linear(dim, HK, bias=False) if c.output_gate else None
        # Per-head inner learning-rate gate, computed from the layer input x.
        self.lr_weight = nn.Parameter(torch.empty(H, dim))
        self.lr_bias = nn.Parameter(torch.empty(H))
        # Per-head LN of the inner loss, the target and the read-out.
        self.ttt_norm_weight = nn.Parameter(torch.empty(H, K))
        self.ttt_norm_bias = nn.Parameter(torch.empty(H, K))
        self.post_norm = _Fp32LayerNorm(HK, eps=c.post_norm_eps)
        self._init_inner(H, K)
        self.reset_parameters()

    def _init_inner(self, H: int, K: int) -> None:  # pragma: no cover - overridden
        raise TypeError("subclass must define the inner model")

    def reset_parameters(self) -> None:
        for lin in (self.wq, self.wk, self.wv, self.wo, self.gate_proj):
            if lin is None:
                continue
            nn.init.normal_(lin.weight, std=0.02)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        if self.variant == "lm":
            nn.init.zeros_(self.token_weight_offset)
        for conv in (self.conv_q, self.conv_k):
            if conv is not None:
                conv.reset_parameters()
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
        replicated, or on token shards under sequence parallelism (both act per token; not with the LM form's
        output gate, which reads the whole layer input)."""
        heads = {f"{n}.{p}": 0 for n in ("wq", "wk", "wv") for p in ("weight", "bias")}
        heads.update({n: 0 for n in ("lr_weight", "lr_bias", "ttt_norm_weight", "ttt_norm_bias", *self.inner_params())})
        return HeadShardSpec(head_params=heads, gather_inputs=("post_norm",),
                             tail_end="wo" if self.gate_proj is None else None)

    def inner_params(self) -> dict[str, nn.Parameter]:
        """The learnable initial inner model, ``{"W1": [H, K, F], "b1": [H, 1, F], ...}``."""
        names = ("W1", "b1") if self.kind == "linear" else ("W1", "b1", "W2", "b2")
        return {n: getattr(self, n) for n in names}

    def state_size(self, seq_len: int | None = None) -> int:
        inner = sum(p.numel() for p in self.inner_params().values())
        # + the carried history of the shared Q/K projection (qk_conv)
        return inner + (0 if self.conv_q is None else (self.conv_q.kernel_size[0] - 1) * self.conv_q.in_channels)

    def core_cost(self, n: int, ctx: int, batch: int, elem: int, layout=None) -> Cost:
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
            f"{super().extra_repr()}, variant={self.variant}, head_dim={self.head_dim}, "
            f"mini_batch_size={c.mini_batch_size}, base_lr={self.base_lr}"
        )

    def token_weights(self) -> torch.Tensor | None:
        """``[N]`` token-index weights ``max(1/(i+1) + d_i, 0)`` of variant ``"lm"`` (None: the video variant)."""
        if self.variant != "lm":
            return None
        N = self.config.mini_batch_size
        base = 1.0 / torch.arange(1, N + 1, device=self.token_weight_offset.device, dtype=torch.float64)
        return torch.clamp_min(base.to(self.token_weight_offset.dtype) + self.token_weight_offset, 0.0)

    # ------------------------------------------------------------------------------------------------ forward
    def _project(self, x: torch.Tensor, positions: torch.Tensor | None, conv_hist: torch.Tensor | None = None):
        """x [B, T, D] -> q, k, r [B, H, T, K] and eta [B, H, T], in fp32 (fp64 for fp64 inputs).

        Variant ``"lm"``: ``positions`` are the tokens' positions inside their mini-batch (see ``_forward``)."""
        q, k, v, _ = self._projections(x, conv_hist)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._prepare(x, q, k, v, positions, acc_dtype(x))

    def _projections(self, x: torch.Tensor, conv_hist: torch.Tensor | None):
        """x [B, T, D] -> q, k, v [B, T, H, K] (autocast applies) and, with ``qk_conv``, the last ``taps - 1``
        shared projections ``[B, taps - 1, H K]`` to carry (``conv_hist``: the previous call's, None = zeros)."""
        B, T, _ = x.shape
        H, K = self.num_heads, self.head_dim
        if self.conv_q is None:
            q, k, v = (proj(x).view(B, T, H, K) for proj in (self.wq, self.wk, self.wv))
            return q, k, v, None
        xq, v = self.wq(x), self.wv(x).view(B, T, H, K)
        taps = self.conv_q.kernel_size[0]
        if conv_hist is None:
            conv_hist = xq.new_zeros(B, taps - 1, H * K)
        xin = torch.cat([conv_hist.to(xq.dtype), xq], dim=1).transpose(1, 2)  # [B, H K, taps - 1 + T]
        q, k = (F.conv1d(xin, cv.weight, cv.bias, groups=H * K).transpose(1, 2).reshape(B, T, H, K)
                for cv in (self.conv_q, self.conv_k))
        return q, k, v, xin[:, :, xin.shape[2] - (taps - 1):].transpose(1, 2)

    def _prepare(self, x, q, k, v, positions, acc):
        B, T, H, K = q.shape
        lm = self.variant == "lm"
        if lm:  # no L2 normalisation of Q/K in the language-model code
            q, k, v = q.to(acc), k.to(acc), v.to(acc)
        else:
            q, k, v = F.normalize(q.to(acc), dim=-1), F.normalize(k.to(acc), dim=-1), v.to(acc)
        if lm:  # 1D positions [T] / [B, T] (checked by _lm_positions); [..., T, 1] keeps T = 3 from reading as 3D
            ang = rope_angles(positions[..., None], K, self.config.rope_theta).squeeze(-2)
            q, k = apply_rope(q, ang), apply_rope(k, ang)
        elif positions is not None:
            if positions.shape[-2 if positions.shape[-1] == 3 and positions.dim() >= 2 else -1] != T:
                raise ValueError(f"{self.name}: positions {tuple(positions.shape)} do not match T={T}")
            ang = rope_angles(positions.to(x.device), K, self.config.rope_theta)
            q, k = apply_rope(q, ang), apply_rope(k, ang)
        gate = ttt_ops.lr_gate(x, self.lr_weight, self.lr_bias, acc)
        eta = (self.base_lr / K) * torch.sigmoid(gate)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if lm:  # raw reconstruction target
            return q, k, v - k, eta.transpose(1, 2)
        r = ttt_ops.reconstruction_target(v, k, self.ttt_norm_weight.to(acc), self.ttt_norm_bias.to(acc),
                                          self.ln_eps)
        return q, k, r, eta.transpose(1, 2)

    def _forward(self, x, *, layout, positions, state, return_state):
        c: TTTConfig = self.config
        B, T, _ = x.shape
        scan = self.select_backend(x.device).fn
        acc = acc_dtype(x)
        if state is not None:  # validate before any of it is used
            self._check_state(state, B, x.device, acc)
        extra = {}
        if self.variant == "lm":
            positions = self._lm_positions(x, positions, state)
            extra["token_weights"] = self.token_weights().to(acc)
        q, k, v, conv = self._projections(x, None if state is None else state.qk_conv)
        with torch.autocast(device_type=x.device.type, enabled=False):
            q, k, r, eta = self._prepare(x, q, k, v, positions, acc)
        if c.eta_order == "public":
            eta = self._public_eta_rows(eta, layout)
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
                kind=self.kind, causal=c.causal, mini_batch_size=c.mini_batch_size, eps=self.ln_eps,
                checkpoint_group=c.scan_checkpoint_group, **extra,
            )
            z = z[:, :, n_pend:]
            y = q + ttt_ops.head_layer_norm(z, ln_w, ln_b, self.ln_eps)  # [B, H, T, K]
            # explicit width, not -1: a batch of 0 has no elements to infer it from
            y = self.post_norm(y.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))
        if self.gate_proj is not None:  # the language-model code's output gate (its use_gate)
            y = F.gelu(self.gate_proj(x), approximate="tanh") * y
        y = self.wo(y)
        new_state = None
        if return_state:
            if not c.causal:
                raise ValueError(f"{self.name}: return_state needs causal=True (the non-causal form has no carry)")
            n_keep = k_all.shape[2] % c.mini_batch_size
            tail = slice(k_all.shape[2] - n_keep, k_all.shape[2])
            new_state = TTTState(boundary, k_all[:, :, tail], r_all[:, :, tail], eta_all[:, :, tail], qk_conv=conv)
        return y, new_state

    def _public_eta_rows(self, eta: torch.Tensor, layout) -> torch.Tensor:
        """Per-token rates ``eta [B, H, T]`` (read order) -> the public code's row-wise rates ``[B, H, T, N]``: row
        ``p`` holds the rates of the ``N`` tokens of the STORAGE mini-batch that holds token ``p``, in read order of
        the columns' mini-batch (see ``eta_order``)."""
        T, N = eta.shape[-1], self.config.mini_batch_size
        src = getattr(layout, "source_index", None)
        if src is None:  # read order = storage order (the public layer on one scene, which it does not interleave)
            src = torch.arange(T, device=eta.device)
        if tuple(src.shape) != (T,) or T % N:
            raise ValueError(f"{self.name}: eta_order='public' needs T a multiple of mini_batch_size={N} and a [T] "
                             f"source_index; got T={T}, source_index {tuple(src.shape)}")
        src = src.to(eta.device)
        read_of = torch.empty_like(src)
        read_of[src] = torch.arange(T, device=src.device)  # storage position -> read position
        cols = (src // N * N)[:, None] + torch.arange(N, device=src.device)  # [T, N] storage positions
        return eta[..., read_of[cols]]  # [B, H, T, N]

    def _lm_positions(self, x: torch.Tensor, positions: torch.Tensor | None, state) -> torch.Tensor:
        """Variant ``"lm"``: 1D RoPE positions modulo the mini-batch size, ``[T]`` or ``[B, T]``: the given positions,
        or by token index continuing after a carried state's pending tokens."""
        N, T = self.config.mini_batch_size, x.shape[1]
        if positions is None:
            n_pend = 0 if state is None else state.pending_k.shape[2]
            return (n_pend + torch.arange(T, device=x.device)) % N
        if positions.is_floating_point() or positions.shape[-1] != T or positions.dim() not in (1, 2):
            raise ValueError(f"{self.name}: variant='lm' takes 1D integer positions [T] or [B, T] with T={T}, got "
                             f"{positions.dtype} {tuple(positions.shape)}")
        return positions.to(x.device) % N

    def _check_state(self, state, B: int, device: torch.device, acc: torch.dtype) -> tuple[torch.Tensor, ...]:
        if not isinstance(state, TTTState):
            raise TypeError(f"{self.name}: state must be the TTTState returned with return_state=True, got {type(state).__name__}")
        w = state.weights
        expect = [(B, *p.shape) for p in self.inner_params().values()]
        if [tuple(t.shape) for t in w] != expect:
            raise ValueError(f"{self.name}: carried state shapes {[tuple(t.shape) for t in w]} != expected {expect}")
        conv_expect = None if self.conv_q is None else (B, self.conv_q.kernel_size[0] - 1, self.conv_q.in_channels)
        conv_got = None if state.qk_conv is None else tuple(state.qk_conv.shape)
        if conv_got != conv_expect:
            raise ValueError(f"{self.name}: carried qk_conv history {conv_got} != expected {conv_expect} (the state "
                             "comes from a layer with other qk_conv settings)")
        return tuple(t.to(device=device, dtype=acc) for t in w)


@register("ttt_linear")
class TTTLinear(_TTTBase):
    """TTT-Linear: the hidden state is a per-head linear model ``x W1 + b1`` (``K x K``)."""

    kind = "linear"
    default_base_lr = 1.0

    class Tooling(_TTTBase.Tooling):
        small_config = {"mini_batch_size": 4}
        kernel_test_config = {"mini_batch_size": 16}

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
    # "tp": the on-chip tensor-parallel Hopper kernel, explicit only until a committed GPU result validates it.
    backend_table = (Backend("tp", _ttt_scan_tp, _tp_supports), *_TTTBase.backend_table)

    class Tooling(_TTTBase.Tooling):
        small_config = {"mini_batch_size": 4, "mlp_expansion": 2}
        kernel_test_config = {"mini_batch_size": 16, "mlp_expansion": 4}
        backend_gates = {**_TTTBase.Tooling.backend_gates, "tp": ("tests/test_ttt_tp.py",)}

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
