"""Segmented video DiT: the CogVideoX transformer with window-local attention and a pluggable global layer.

Backbone: CogVideoX (Yang et al. 2024, arXiv 2408.06072), written here with the module / parameter names of
diffusers' ``CogVideoXTransformer3DModel`` so that a diffusers checkpoint loads 1:1
(:meth:`SegmentedDiT.from_cogvideox`).
Long-video extension: Dalal et al. 2025, "One-Minute Video Generation with Test-Time Training" (arXiv 2504.05298):

* self-attention runs inside 3 s windows (13 latent frames + that segment's text; RoPE positions restart in every
  window); neighbouring windows share one latent frame whose outputs are averaged;
* after the attention of every block, a global sequence mixer ``G`` (any :mod:`seqmix.layers` registry name:
  TTT-MLP, TTT-Linear, Mamba2, Gated DeltaNet, sliding-window attention, ...) mixes the whole video in the
  interleaved order ``[text_1, video_1, text_2, video_2, ...]``, once forward and once over the reversed sequence,
  each gated by ``tanh(alpha)`` with separate text / video gate vectors (initialised to 0.1)::

      y = attn_out                                   (interleaved via the layout)
      y = y + tanh(a_fwd[text|video]) * G(y)
      y = y + tanh(a_bwd[text|video]) * rev(G(rev(y)))      (same G, shared parameters)
      stream = stream + gate_msa * y                 (CogVideoX's adaLN-gated residual)

Parameters (D = heads x head dim, D_t = time_embed_dim, C = in_channels, p = patch): per block
``12 D D_t + 12 D`` (two adaLN-zero linears) ``+ 4 D^2 + 4 D`` (Q/K/V/O) ``+ 4 K`` (q/k norms) ``+ 8 D^2 + 5 D``
(MLP) ``+ 4 D`` (LayerNorms); CogVideoX-5B (42 blocks, D = 3072, D_t = 512): 5,570,283,072 parameters in all.
A TTT-MLP global layer adds 39,521,328 per block (mixer 39,509,040 + four 3072-wide gates), 1.66B over 42 blocks:
7,230,178,848 in all (the paper's "7.2B"); TTT-Linear adds 38,132,784 per block.

Shape legend: B batch, F latent frames, C channels, H x W latent grid, S segments, L text tokens per segment,
N tokens per frame, T = S L + F N tokens, D model width, K head dim, W_f frames per window.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from seqmix import layers as mixers
from seqmix.layers.wrappers import TanhGate
from seqmix.ops.rope import apply_rope, rope_angles

from .layout import VideoLayout

logger = logging.getLogger(__name__)

__all__ = ["DiTConfig", "SegmentedDiT", "LoadReport", "GlobalLayer"]

# diffusers' defaults for CogVideoXTransformer3DModel where ours (CogVideoX-5B sizes) differ: a config.json that
# omits one of these keys means the diffusers default, not ours.
_DIFFUSERS_DEFAULTS = {"num_attention_heads": 30, "num_layers": 30, "use_rotary_positional_embeddings": False}
# Module-name marker of the parameters that a CogVideoX checkpoint does not have.
_GLOBAL = "global_layer"


@dataclass(kw_only=True)
class DiTConfig:
    """Settings of :class:`SegmentedDiT`. Defaults: CogVideoX-5B (plus no global layer).

    The first group of fields are diffusers' ``CogVideoXTransformer3DModel`` config keys (same names and meaning)
    so that a checkpoint's ``config.json`` maps onto this class (:meth:`from_diffusers_config`).

    Attributes:
        num_attention_heads: heads H (5B: 48).
        attention_head_dim: head dim K (64); must be divisible by 16 for the (t, h, w) = (1/4, 3/8, 3/8) RoPE split.
        in_channels, out_channels: latent channels C in / out (16).
        flip_sin_to_cos, freq_shift: sinusoidal timestep features (cos first; no shift).
        time_embed_dim: D_t, width of the timestep embedding (512).
        ofs_embed_dim: width of the "ofs" embedding of CogVideoX1.5-I2V (None = absent); must equal time_embed_dim.
        text_embed_dim: width of the text-encoder (T5) features (4096).
        num_layers: transformer blocks (42).
        dropout: dropout on the embeddings and inside the MLP (0).
        attention_bias: bias in the Q/K/V projections (True).
        sample_width, sample_height, sample_frames, temporal_compression_ratio, max_text_seq_length,
            spatial_interpolation_scale, temporal_interpolation_scale: kept for config round trips; they only size
            CogVideoX-2B's absolute position table, which this class does not support (it uses RoPE).
        patch_size: spatial patch p (2).
        patch_size_t: temporal patch of CogVideoX 1.5 (must be None: windows of 13 frames do not split in pairs).
        activation_fn: MLP activation, ``"gelu-approximate"`` (GELU tanh) or ``"gelu"``.
        timestep_activation_fn: ``"silu"`` (or ``"swish"``, ``"gelu"``, ``"relu"``, ``"mish"``).
        norm_elementwise_affine, norm_eps: LayerNorm settings of the adaLN / final norms.
        use_rotary_positional_embeddings: must be True (CogVideoX-5B); 3D RoPE on video Q/K.
        use_learned_positional_embeddings: must be False.
        patch_bias: bias of the patch-embedding conv.

        mixer: registry name of the global layer (``seqmix.layers.available()``) or None (local attention only).
        mixer_config: config fields of the mixer (``causal=False`` is added where the mixer has a non-causal form).
        mixer_num_heads: heads of the global layer (default: ``num_attention_heads``).
        mixer_positions: pass the global 3D RoPE positions to the mixer; None = automatic (mixers whose class declares
            ``takes_positions``, i.e. TTT and attention, get them; position-free recurrences do not).
        gate_init: initial value of the four tanh-gate vectors per block (paper: 0.1).
        rope_theta: RoPE base of the attention and of the global positions (CogVideoX: 1e4).
        gradient_checkpointing: recompute every block in backward (torch.utils.checkpoint, non-reentrant) in training.
    """

    num_attention_heads: int = 48
    attention_head_dim: int = 64
    in_channels: int = 16
    out_channels: int | None = 16
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    time_embed_dim: int = 512
    ofs_embed_dim: int | None = None
    text_embed_dim: int = 4096
    num_layers: int = 42
    dropout: float = 0.0
    attention_bias: bool = True
    sample_width: int = 90
    sample_height: int = 60
    sample_frames: int = 49
    patch_size: int = 2
    patch_size_t: int | None = None
    temporal_compression_ratio: int = 4
    max_text_seq_length: int = 226
    activation_fn: str = "gelu-approximate"
    timestep_activation_fn: str = "silu"
    norm_elementwise_affine: bool = True
    norm_eps: float = 1e-5
    spatial_interpolation_scale: float = 1.875
    temporal_interpolation_scale: float = 1.0
    use_rotary_positional_embeddings: bool = True
    use_learned_positional_embeddings: bool = False
    patch_bias: bool = True

    mixer: str | None = None
    mixer_config: dict[str, Any] = field(default_factory=dict)
    mixer_num_heads: int | None = None
    mixer_positions: bool | None = None
    gate_init: float = 0.1
    rope_theta: float = 1e4
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        for name in ("num_attention_heads", "attention_head_dim", "in_channels", "time_embed_dim", "text_embed_dim",
                     "num_layers", "patch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"DiTConfig.{name} must be a positive int, got {v!r}")
        if self.out_channels is None:
            self.out_channels = self.in_channels
        if not self.use_rotary_positional_embeddings or self.use_learned_positional_embeddings:
            raise ValueError(
                "SegmentedDiT needs use_rotary_positional_embeddings=True and use_learned_positional_embeddings=False "
                "(CogVideoX-5B); CogVideoX-2B's absolute position table covers one fixed-size clip and does not "
                "extend to segmented long videos"
            )
        if self.patch_size_t is not None:
            raise ValueError(
                f"patch_size_t={self.patch_size_t} (CogVideoX 1.5) is not supported: 13-frame windows sharing one "
                "frame do not split into temporal patches"
            )
        if self.attention_head_dim % 16:
            raise ValueError(f"attention_head_dim={self.attention_head_dim} must be divisible by 16 for 3D RoPE")
        if self.activation_fn not in _FF_ACTIVATIONS:
            raise ValueError(f"activation_fn {self.activation_fn!r} not supported; valid: {sorted(_FF_ACTIVATIONS)}")
        if self.timestep_activation_fn not in _TIME_ACTIVATIONS:
            raise ValueError(
                f"timestep_activation_fn {self.timestep_activation_fn!r} not supported; "
                f"valid: {sorted(_TIME_ACTIVATIONS)}"
            )
        if self.ofs_embed_dim is not None and self.ofs_embed_dim != self.time_embed_dim:
            raise ValueError(f"ofs_embed_dim={self.ofs_embed_dim} must equal time_embed_dim={self.time_embed_dim}")
        if self.mixer is not None and not isinstance(self.mixer, str):
            raise TypeError(f"DiTConfig.mixer must be a registry name (str) or None, got {type(self.mixer).__name__}")
        if not isinstance(self.mixer_config, dict):
            raise TypeError(f"DiTConfig.mixer_config must be a dict, got {type(self.mixer_config).__name__}")

    @property
    def inner_dim(self) -> int:
        """D = heads x head dim (5B: 3072)."""
        return self.num_attention_heads * self.attention_head_dim

    @classmethod
    def from_diffusers_config(cls, config: dict[str, Any], **overrides: Any) -> "DiTConfig":
        """Map a diffusers ``CogVideoXTransformer3DModel`` ``config.json`` dict (plus our own fields in ``overrides``).

        Keys starting with ``_`` (``_class_name``, ``_diffusers_version``) are metadata; other unknown keys are
        logged and ignored. A missing key takes diffusers' default.
        """
        cls_name = config.get("_class_name")
        if cls_name is not None and cls_name != "CogVideoXTransformer3DModel":
            raise ValueError(f"config.json describes a {cls_name}, expected a CogVideoXTransformer3DModel")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown_over = sorted(set(overrides) - names)
        if unknown_over:
            raise TypeError(f"unknown DiTConfig field(s) {unknown_over}; valid: {', '.join(sorted(names))}")
        kw = dict(_DIFFUSERS_DEFAULTS)
        ignored = []
        for k, v in config.items():
            if k.startswith("_"):
                continue
            if k in names:
                kw[k] = v
            else:
                ignored.append(k)
        if ignored:
            logger.warning("ignoring config.json keys unknown to DiTConfig: %s", ", ".join(sorted(ignored)))
        kw.update(overrides)
        return cls(**kw)


_FF_ACTIVATIONS = {"gelu-approximate": "tanh", "gelu": "none"}
_TIME_ACTIVATIONS = {"silu": nn.SiLU, "swish": nn.SiLU, "gelu": nn.GELU, "relu": nn.ReLU, "mish": nn.Mish}


# ------------------------------------------------------------------------------------------------- modules
def timestep_features(t: torch.Tensor, dim: int, flip_sin_to_cos: bool, shift: float, max_period: int = 10000):
    """Sinusoidal features ``[B, dim]`` (fp32) of timesteps ``t [B]`` (DDPM / diffusers ``get_timestep_embedding``)."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - shift)
    arg = t[:, None].float() * torch.exp(exponent)[None]
    emb = torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """``linear_2(act(linear_1(x)))``: sinusoidal features -> conditioning vector (diffusers' TimestepEmbedding)."""

    def __init__(self, in_dim: int, out_dim: int, act: str):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.act = _TIME_ACTIVATIONS[act]()
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class PatchEmbed(nn.Module):
    """Latents ``[B, F, C, H, W]`` -> video tokens ``[B, F N, D]`` (p x p conv, frame-major, row-major inside a
    frame); text features ``[B, S L, D_text]`` -> ``[B, S L, D]`` (CogVideoXPatchEmbed without position table)."""

    def __init__(self, c: DiTConfig):
        super().__init__()
        self.proj = nn.Conv2d(c.in_channels, c.inner_dim, kernel_size=c.patch_size, stride=c.patch_size,
                              bias=c.patch_bias)
        self.text_proj = nn.Linear(c.text_embed_dim, c.inner_dim)

    def forward(self, text: torch.Tensor, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, Fr, C, H, W = latents.shape
        v = self.proj(latents.reshape(B * Fr, C, H, W))  # [B F, D, H/p, W/p]
        v = v.flatten(2).transpose(1, 2).reshape(B, -1, v.shape[1])  # [B, F N, D]
        return self.text_proj(text), v


class LayerNormZero(nn.Module):
    """adaLN-zero with separate text / video ("expert") modulation (diffusers' CogVideoXLayerNormZero).

    ``linear(silu(temb))`` gives shift, scale, gate for video and for text: ``6 D (D_t + 1)`` parameters.
    """

    def __init__(self, cond_dim: int, dim: int, elementwise_affine: bool, eps: float):
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(cond_dim, 6 * dim)
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, vid: torch.Tensor, txt: torch.Tensor, temb: torch.Tensor):
        shift, scale, gate, t_shift, t_scale, t_gate = self.linear(self.silu(temb)).chunk(6, dim=1)
        vid = self.norm(vid) * (1 + scale)[:, None] + shift[:, None]
        txt = self.norm(txt) * (1 + t_scale)[:, None] + t_shift[:, None]
        return vid, txt, gate[:, None], t_gate[:, None]


class _GELUProj(nn.Module):
    def __init__(self, dim: int, hidden: int, approximate: str):
        super().__init__()
        self.proj = nn.Linear(dim, hidden)
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate=self.approximate)


class FeedForward(nn.Module):
    """``Linear(D, 4D) -> GELU(tanh) -> Linear(4D, D)`` with dropouts, named ``net.{0.proj, 2}`` as in diffusers."""

    def __init__(self, dim: int, dropout: float, activation_fn: str):
        super().__init__()
        self.net = nn.ModuleList([
            _GELUProj(dim, 4 * dim, _FF_ACTIVATIONS[activation_fn]),
            nn.Dropout(dropout),
            nn.Linear(4 * dim, dim),
            nn.Dropout(dropout),  # diffusers' final_dropout=True
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.net:
            x = m(x)
        return x


class _Plan(NamedTuple):
    """Per-(layout, device) index tensors shared by all blocks of one forward (built once, not per block)."""

    layout: VideoLayout
    frame_idx: torch.Tensor  # [S W_f] latent frame of every window frame
    frame_scale: torch.Tensor | None  # [F, 1, 1] 1 / (windows containing the frame); None if no frame is shared
    rope: torch.Tensor  # [W_f N, K/2] fp64 angles of the video tokens of one window
    to_fwd: torch.Tensor | None  # [T] storage -> interleaved
    from_fwd: torch.Tensor | None  # [T] interleaved -> storage
    to_bwd: torch.Tensor | None  # [T] storage -> reversed interleaved
    from_bwd: torch.Tensor | None  # [T] reversed interleaved -> storage
    pos_fwd: torch.Tensor | None  # [T, 3] global positions, interleaved order
    pos_bwd: torch.Tensor | None  # [T, 3] the same tokens' positions in reversed order


class WindowAttention(nn.Module):
    """CogVideoX self-attention run per segment window (diffusers ``Attention`` + ``CogVideoXAttnProcessor2_0``).

    Window i = text of segment i (L tokens, unrotated) + latent frames [12 i, 12 i + 13) (3D RoPE with positions
    restarting at t = 0). All windows have the same size, so they run as one batch of ``B S`` sequences of
    ``L + 13 N`` tokens; nothing is ever materialised over the whole video. Q/K/V are projected and q/k-normalised
    once per token in storage order (shared frames are not projected twice), gathered into windows, rotated,
    attended; the output of a shared frame is the mean over its two windows, taken before ``to_out`` (exact,
    since ``to_out`` is affine).

    Parameters: ``4 D^2 + 3 D (bias) + D`` (to_out bias) ``+ 4 K`` (per-head q/k LayerNorms, eps 1e-6).
    """

    def __init__(self, dim: int, heads: int, head_dim: int, bias: bool):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner, bias=bias)
        self.to_k = nn.Linear(dim, inner, bias=bias)
        self.to_v = nn.Linear(dim, inner, bias=bias)
        self.norm_q = nn.LayerNorm(head_dim, eps=1e-6)
        self.norm_k = nn.LayerNorm(head_dim, eps=1e-6)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(0.0)])

    def forward(self, vid: torch.Tensor, txt: torch.Tensor, plan: _Plan) -> tuple[torch.Tensor, torch.Tensor]:
        """``vid [B, F N, D], txt [B, S L, D] -> (vid_out, txt_out)`` of the same shapes."""
        lay = plan.layout
        B, S, L, N, Wf = vid.shape[0], lay.num_segments, lay.text_len, lay.tokens_per_frame, lay.window_frames
        H, K = self.heads, self.head_dim
        x = torch.cat([txt, vid], dim=1)  # [B, T, D]
        q = self.norm_q(self.to_q(x).unflatten(-1, (H, K)))  # [B, T, H, K]
        k = self.norm_k(self.to_k(x).unflatten(-1, (H, K)))
        v = self.to_v(x).unflatten(-1, (H, K))
        # Under autocast LayerNorm returns fp32 while the projections are low precision: attend in v's dtype.
        q, k = q.to(v.dtype), k.to(v.dtype)

        def windows(t: torch.Tensor, rotate: bool) -> torch.Tensor:
            # [B, T, H, K] -> [B S, L + W_f N, H, K]: each segment's text, then its window's frames.
            t_txt = t[:, : S * L].reshape(B * S, L, H, K)
            t_vid = t[:, S * L :].unflatten(1, (lay.num_frames, N)).index_select(1, plan.frame_idx)
            t_vid = t_vid.reshape(B * S, Wf * N, H, K)
            if rotate:  # RoPE in fp32 as diffusers' apply_rotary_emb, on video tokens only
                t_vid = apply_rope(t_vid.float(), plan.rope).to(t.dtype)
            return torch.cat([t_txt, t_vid], dim=1).transpose(1, 2)  # [B S, H, L + W_f N, K]

        o = F.scaled_dot_product_attention(windows(q, True), windows(k, True), windows(v, False))
        o = o.transpose(1, 2).flatten(2).unflatten(0, (B, S))  # [B, S, L + W_f N, H K]
        txt_o = o[:, :, :L].reshape(B, S * L, H * K)
        vid_w = o[:, :, L:].reshape(B, S * Wf, N, H * K)
        if plan.frame_scale is None:  # windows tile the frames exactly (S = 1 or no overlap)
            vid_o = vid_w.new_zeros(B, lay.num_frames, N, H * K).index_copy(1, plan.frame_idx, vid_w)
        else:  # average the shared frames over the windows that contain them
            vid_o = vid_w.new_zeros(B, lay.num_frames, N, H * K).index_add(1, plan.frame_idx, vid_w)
            vid_o = vid_o * plan.frame_scale.to(vid_o.dtype)
        vid_o = vid_o.flatten(1, 2)
        out, drop = self.to_out
        return drop(out(vid_o)), drop(out(txt_o))


class GlobalLayer(nn.Module):
    """The paper's bidirectional gated global layer around one registry mixer ``G`` (parameters shared by both
    directions) with four gate vectors {forward, backward} x {text, video} of width D, initialised to ``gate_init``.

    ``txt [B, S L, D], vid [B, F N, D]`` (attention outputs, storage order) -> the same shapes::

        y = interleave(txt | vid)
        y = y + tanh(a_fwd[text|video]) * G(y, positions)
        y = y + tanh(a_bwd[text|video]) * rev(G(rev(y), positions of rev(y)))

    Tokens keep their own global RoPE positions in the reversed pass (as :class:`seqmix.layers.Bidirectional`;
    the public ttt-video-dit code instead rotates the flipped video by sequence index, i.e. mirrored positions).
    The gates act in storage order, where text and video are contiguous (no ``[T, D]`` gate tensor is built).
    Parameters: ``G`` plus ``4 D``.
    """

    def __init__(self, mixer: mixers.Mixer, dim: int, gate_init: float, use_positions: bool):
        super().__init__()
        self.mixer = mixer
        self.use_positions = use_positions
        self.gate_fwd_text = TanhGate(dim, gate_init)
        self.gate_fwd_video = TanhGate(dim, gate_init)
        self.gate_bwd_text = TanhGate(dim, gate_init)
        self.gate_bwd_video = TanhGate(dim, gate_init)

    def forward(self, vid: torch.Tensor, txt: torch.Tensor, plan: _Plan) -> tuple[torch.Tensor, torch.Tensor]:
        n_txt = txt.shape[1]
        # 1. forward direction, interleaved order
        y = torch.cat([txt, vid], dim=1)
        g = self.mixer(y.index_select(1, plan.to_fwd), positions=plan.pos_fwd if self.use_positions else None)
        g = g.index_select(1, plan.from_fwd)
        txt, vid = self.gate_fwd_text(txt, g[:, :n_txt]), self.gate_fwd_video(vid, g[:, n_txt:])
        # 2. backward direction: the same mixer over the reversed interleaved sequence, un-reversed afterwards
        y = torch.cat([txt, vid], dim=1)
        g = self.mixer(y.index_select(1, plan.to_bwd), positions=plan.pos_bwd if self.use_positions else None)
        g = g.index_select(1, plan.from_bwd)
        return self.gate_bwd_video(vid, g[:, n_txt:]), self.gate_bwd_text(txt, g[:, :n_txt])


class SegmentedDiTBlock(nn.Module):
    """One CogVideoX block with window attention and an optional global layer (see the module docstring).

    Order: adaLN-zero (norm1) -> window self-attention -> global layer (forward, backward) -> gated residual ->
    adaLN-zero (norm2) -> MLP over ``[text | video]`` -> gated residual.
    """

    def __init__(self, c: DiTConfig, global_layer: GlobalLayer | None):
        super().__init__()
        D = c.inner_dim
        self.norm1 = LayerNormZero(c.time_embed_dim, D, c.norm_elementwise_affine, c.norm_eps)
        self.attn1 = WindowAttention(D, c.num_attention_heads, c.attention_head_dim, c.attention_bias)
        self.norm2 = LayerNormZero(c.time_embed_dim, D, c.norm_elementwise_affine, c.norm_eps)
        self.ff = FeedForward(D, c.dropout, c.activation_fn)
        self.global_layer = global_layer

    def forward(self, vid: torch.Tensor, txt: torch.Tensor, temb: torch.Tensor, plan: _Plan):
        n_txt = txt.shape[1]
        # 1. attention branch
        nv, nt, gate_msa, t_gate_msa = self.norm1(vid, txt, temb)
        av, at = self.attn1(nv, nt, plan)
        # 2. global layer on the attention output, before CogVideoX's gate adds it to the stream
        if self.global_layer is not None:
            av, at = self.global_layer(av, at, plan)
        vid = vid + gate_msa * av
        txt = txt + t_gate_msa * at
        # 3. MLP branch (text and video share the MLP, modulated separately)
        nv, nt, gate_ff, t_gate_ff = self.norm2(vid, txt, temb)
        ff = self.ff(torch.cat([nt, nv], dim=1))
        vid = vid + gate_ff * ff[:, n_txt:]
        txt = txt + t_gate_ff * ff[:, :n_txt]
        return vid, txt


@dataclass
class LoadReport:
    """What :meth:`SegmentedDiT.from_cogvideox` did: parameters initialised fresh (the global layers), checkpoint
    keys the model lacks (``unexpected``), model keys the checkpoint lacks (``missing``), files read."""

    fresh_keys: list[str]
    missing_keys: list[str]
    unexpected_keys: list[str]
    files: list[str]


def _names(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


class SegmentedDiT(nn.Module):
    """CogVideoX transformer over a segmented long video, with an optional global sequence mixer in every block.

    ``forward(latents [B, F, C, H, W], timestep [B], text [B, S L, D_text], layout) -> [B, F, C_out, H, W]``
    (v-/noise prediction as the checkpoint was trained). Parameter names equal diffusers'
    ``CogVideoXTransformer3DModel``; the global layers live under ``transformer_blocks.{i}.global_layer``.
    See the module docstring for the architecture and parameter counts.
    """

    def __init__(self, config: DiTConfig):
        super().__init__()
        if not isinstance(config, DiTConfig):
            raise TypeError(f"SegmentedDiT expects a DiTConfig, got {type(config).__name__}")
        c = self.config = config
        D = c.inner_dim
        self.gradient_checkpointing = c.gradient_checkpointing

        # 1. patch embedding (latents and text)
        self.patch_embed = PatchEmbed(c)
        self.embedding_dropout = nn.Dropout(c.dropout)
        # 2. timestep (and CogVideoX1.5-I2V "ofs") embedding
        self.time_embedding = TimestepEmbedding(D, c.time_embed_dim, c.timestep_activation_fn)
        self.ofs_embedding = (
            TimestepEmbedding(c.ofs_embed_dim, c.ofs_embed_dim, c.timestep_activation_fn) if c.ofs_embed_dim else None
        )
        # 3. blocks (each with its own global layer when a mixer is configured)
        self.mixer_positions = self._mixer_uses_positions() if c.mixer is not None else False
        self.transformer_blocks = nn.ModuleList(
            SegmentedDiTBlock(c, self._build_global_layer() if c.mixer is not None else None)
            for _ in range(c.num_layers)
        )
        self.norm_final = nn.LayerNorm(D, c.norm_eps, c.norm_elementwise_affine)
        # 4. output: adaLN (shift, scale) + linear to p x p x C_out per token
        self.norm_out = _AdaLayerNorm(c.time_embed_dim, D, c.norm_elementwise_affine, c.norm_eps)
        self.proj_out = nn.Linear(D, c.patch_size * c.patch_size * c.out_channels)
        self._plans: dict[tuple, _Plan] = {}

    # ------------------------------------------------------------------------------------------ global layer
    def _mixer_cfg(self) -> dict[str, Any]:
        c = self.config
        cfg = dict(c.mixer_config)
        if mixers.mixer_class(c.mixer).can_be_non_causal() and "causal" not in cfg:  # unknown name -> ValueError
            cfg["causal"] = False  # video is non-causal; the backward pass covers the other direction anyway
        return cfg

    def _mixer_uses_positions(self) -> bool:
        if self.config.mixer_positions is not None:
            return bool(self.config.mixer_positions)
        return mixers.mixer_class(self.config.mixer).takes_positions

    def _build_global_layer(self) -> GlobalLayer:
        c = self.config
        heads = c.mixer_num_heads or c.num_attention_heads
        mixer = mixers.build(c.mixer, dim=c.inner_dim, num_heads=heads, **self._mixer_cfg())
        return GlobalLayer(mixer, c.inner_dim, c.gate_init, self.mixer_positions)

    @staticmethod
    def is_global_key(name: str) -> bool:
        """True for parameter / state-dict names of the global layers (absent from CogVideoX checkpoints)."""
        return f".{_GLOBAL}." in f".{name}"

    def param_groups(self) -> dict[str, dict[str, nn.Parameter]]:
        """Parameters by training role (the paper's stages): ``{"pretrained", "attention_qkvo", "global_layer"}``,
        each ``{name: parameter}``; every parameter is in exactly one group.

        ``attention_qkvo``: ``attn1.to_q/to_k/to_v/to_out`` of every block and their per-head q/k LayerNorms (the
        public code trains those norms together with Q/K/V/O in its "qkvo" stage). ``global_layer``: mixers and
        their tanh gates. ``pretrained``: everything else from the CogVideoX checkpoint.
        """
        groups: dict[str, dict[str, nn.Parameter]] = {"pretrained": {}, "attention_qkvo": {}, "global_layer": {}}
        for name, p in self.named_parameters():
            if self.is_global_key(name):
                groups["global_layer"][name] = p
            elif ".attn1." in name:
                groups["attention_qkvo"][name] = p
            else:
                groups["pretrained"][name] = p
        return groups

    def state_size(self, seq_len: int | None = None) -> int:
        """Recurrent state elements of the global layers (both directions, all blocks) per sequence."""
        return sum(2 * b.global_layer.mixer.state_size(seq_len) for b in self.transformer_blocks
                   if b.global_layer is not None)

    # ------------------------------------------------------------------------------------------------ forward
    def _plan(self, layout: VideoLayout, device: torch.device) -> _Plan:
        key = (layout, str(device))
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        idx = layout.index()
        counts = idx.frame_counts
        scale = None if bool((counts == 1).all()) else (1.0 / counts).view(-1, 1, 1).to(device)
        rope = rope_angles(idx.window_positions[layout.text_len :], self.config.attention_head_dim,
                           self.config.rope_theta).to(device)
        glob = [None] * 6
        if self.config.mixer is not None:
            inter, deinter, rev = idx.interleave, idx.deinterleave, idx.reverse
            # x_bwd = rev(interleave(x_sto)) = x_sto[inter[rev]]; storage(rev(h)) = h[rev[deinter]].
            glob = [inter, deinter, inter[rev], rev[deinter], idx.global_positions, idx.global_positions[rev]]
            glob = [t.to(device) for t in glob]
        plan = _Plan(layout, idx.frame_windows.flatten().to(device), scale, rope, *glob)
        if len(self._plans) >= 8:  # a handful of layouts per run (training stages, eval lengths)
            self._plans.pop(next(iter(self._plans)))
        self._plans[key] = plan
        return plan

    def _check_inputs(self, latents, timestep, text, layout) -> torch.Tensor:
        c = self.config
        if not isinstance(layout, VideoLayout):
            raise TypeError(f"layout must be a VideoLayout, got {type(layout).__name__}")
        for name, t in (("latents", latents), ("text", text)):
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                raise TypeError(f"{name} must be a floating-point torch.Tensor, got {getattr(t, 'dtype', type(t))}")
        if latents.dim() != 5:
            raise ValueError(f"latents must be [B, F, C, H, W], got shape {tuple(latents.shape)}")
        B, Fr, C, H, W = latents.shape
        if C != c.in_channels:
            raise ValueError(f"latents have {C} channels, the model expects in_channels={c.in_channels}")
        if layout.patch_size != c.patch_size:
            raise ValueError(f"layout.patch_size={layout.patch_size} != model patch_size={c.patch_size}")
        if Fr != layout.num_frames:
            raise ValueError(
                f"latents have {Fr} frames; the layout ({layout.num_segments} segments of {layout.window_frames}-frame "
                f"windows sharing {layout.overlap_frames}) needs {layout.num_frames}"
            )
        if (H, W) != (layout.latent_height, layout.latent_width):
            raise ValueError(f"latents are {H}x{W}; the layout expects {layout.latent_height}x{layout.latent_width}")
        if text.dim() != 3 or text.shape[0] != B:
            raise ValueError(f"text must be [B={B}, S L, text_embed_dim], got shape {tuple(text.shape)}")
        if text.shape[2] != c.text_embed_dim:
            raise ValueError(f"text width {text.shape[2]} != text_embed_dim={c.text_embed_dim}")
        n = layout.text_tokens
        if text.shape[1] != n:
            kind = "longer than" if text.shape[1] > n else "shorter than"
            raise ValueError(
                f"text has {text.shape[1]} tokens, {kind} the layout's {layout.num_segments} slots x "
                f"text_len={layout.text_len} = {n}; pad every segment's prompt to its slot (VideoLayout.pack_text)"
            )
        timestep = torch.as_tensor(timestep, device=latents.device)
        if timestep.dim() == 0:
            timestep = timestep.expand(B)
        if timestep.shape != (B,):
            raise ValueError(f"timestep must be a scalar or [B={B}], got shape {tuple(timestep.shape)}")
        return timestep

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor | float,
        text: torch.Tensor,
        layout: VideoLayout,
        *,
        ofs: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        """Denoiser output ``[B, F, C_out, H, W]`` for ``latents [B, F, C, H, W]`` (F = ``layout.num_frames``),
        ``timestep [B]`` (or a scalar), ``text [B, S L, text_embed_dim]`` (segment i's prompt in tokens
        ``[i L, (i + 1) L)``), ``layout`` and, for checkpoints with an ofs embedding, ``ofs [B]``."""
        c = self.config
        timestep = self._check_inputs(latents, timestep, text, layout)
        B, Fr, _, H, W = latents.shape
        plan = self._plan(layout, latents.device)

        # 1. time embedding (sinusoidal features are fp32; cast to the input dtype as diffusers does)
        emb = self.time_embedding(
            timestep_features(timestep, c.inner_dim, c.flip_sin_to_cos, c.freq_shift).to(latents.dtype)
        )
        if self.ofs_embedding is not None:
            if ofs is None:
                raise ValueError("this checkpoint has an ofs embedding (ofs_embed_dim is set): pass ofs=")
            ofs = torch.as_tensor(ofs, device=latents.device).expand(B)
            emb = emb + self.ofs_embedding(
                timestep_features(ofs, c.ofs_embed_dim, c.flip_sin_to_cos, c.freq_shift).to(latents.dtype)
            )

        # 2. patch embedding: text [B, S L, D], video [B, F N, D] (storage order)
        txt, vid = self.patch_embed(text, latents)
        txt, vid = self.embedding_dropout(txt), self.embedding_dropout(vid)

        # 3. transformer blocks
        ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.transformer_blocks:
            if ckpt:
                vid, txt = checkpoint(block, vid, txt, emb, plan, use_reentrant=False)
            else:
                vid, txt = block(vid, txt, emb, plan)

        # 4. final norm and projection (video tokens only)
        vid = self.norm_out(self.norm_final(vid), emb)
        vid = self.proj_out(vid)  # [B, F N, p p C_out]

        # 5. unpatchify
        p = c.patch_size
        out = vid.reshape(B, Fr, H // p, W // p, -1, p, p)
        return out.permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)

    # ------------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_cogvideox(
        cls,
        path: str | os.PathLike,
        mixer: str | None = None,
        *,
        strict: bool = True,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        **cfg: Any,
    ) -> "SegmentedDiT":
        """Load a diffusers-format CogVideoX transformer and add fresh global layers.

        Args:
            path: a transformer directory with ``config.json`` and ``diffusion_pytorch_model.safetensors`` or
                sharded ``*.safetensors`` + ``diffusion_pytorch_model.safetensors.index.json`` (a pipeline root
                with a ``transformer/`` subfolder also works). Nothing is downloaded; diffusers is not imported.
            mixer: registry name of the global layer, or None (local attention only).
            strict: raise (naming them) on checkpoint keys the model lacks or model keys the checkpoint lacks
                (the global layers excepted); with ``strict=False`` they are logged and reported.
            dtype, device: cast / move the model before the weights are copied in (default fp32, CPU).
            **cfg: other :class:`DiTConfig` fields (``mixer_config``, ``gate_init``, ``gradient_checkpointing``, ...).

        Returns:
            The model; ``model.load_report`` is a :class:`LoadReport` with the freshly initialised keys.
        """
        try:
            from safetensors import safe_open
        except ImportError as e:  # pragma: no cover - safetensors is a test / loading dependency
            raise ImportError("from_cogvideox needs the 'safetensors' package (pip install safetensors)") from e
        root = Path(path)
        if not (root / "config.json").is_file() and (root / "transformer" / "config.json").is_file():
            root = root / "transformer"
        if not (root / "config.json").is_file():
            raise FileNotFoundError(f"no config.json in {str(path)!r} (expected a diffusers transformer directory)")
        with open(root / "config.json") as f:
            config = DiTConfig.from_diffusers_config(json.load(f), mixer=mixer, **cfg)
        files = _weight_files(root)

        model = cls(config)
        if dtype is not None or device is not None:
            model = model.to(device=device, dtype=dtype)
        params = {k: v for k, v in model.state_dict().items() if not cls.is_global_key(k)}
        seen: set[str] = set()
        unexpected: list[str] = []
        mismatched: list[str] = []
        with torch.no_grad():
            for file in files:
                with safe_open(str(file), framework="pt", device="cpu") as sf:
                    for key in sf.keys():
                        target = params.get(key)
                        if target is None:
                            unexpected.append(key)
                            continue
                        tensor = sf.get_tensor(key)
                        if tuple(tensor.shape) != tuple(target.shape):
                            mismatched.append(f"{key}: checkpoint {tuple(tensor.shape)} vs model {tuple(target.shape)}")
                            continue
                        target.copy_(tensor)  # casts to the model's dtype / device
                        seen.add(key)
        if mismatched:
            raise ValueError(f"shape mismatch between {root} and the model config: {_names(mismatched)}")
        missing = sorted(set(params) - seen)
        unexpected = sorted(unexpected)
        if (missing or unexpected) and strict:
            msg = []
            if missing:
                msg.append(f"missing from the checkpoint ({len(missing)}): {_names(missing)}")
            if unexpected:
                msg.append(f"unexpected in the checkpoint ({len(unexpected)}): {_names(unexpected)}")
            raise ValueError(f"cannot load {root} strictly: " + "; ".join(msg) + " (strict=False loads the rest)")
        if missing or unexpected:
            logger.warning("loaded %s non-strictly: %d missing key(s) [%s], %d unexpected key(s) [%s]", root,
                           len(missing), _names(missing), len(unexpected), _names(unexpected))
        fresh = [k for k in model.state_dict() if cls.is_global_key(k)]
        logger.info("loaded %s (%d tensors from %d file(s)); %d global-layer tensors initialised fresh", root,
                    len(seen), len(files), len(fresh))
        model.load_report = LoadReport(fresh, missing, unexpected, [str(f) for f in files])
        return model


class _AdaLayerNorm(nn.Module):
    """Final adaLN: ``LN(x) (1 + scale) + shift`` with ``(shift, scale) = linear(silu(temb))`` (diffusers' AdaLayerNorm
    with chunk_dim=1, the CogVideoX order)."""

    def __init__(self, cond_dim: int, dim: int, elementwise_affine: bool, eps: float):
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(cond_dim, 2 * dim)
        self.norm = nn.LayerNorm(dim, eps, elementwise_affine)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        shift, scale = self.linear(self.silu(temb)).chunk(2, dim=1)
        return self.norm(x) * (1 + scale)[:, None] + shift[:, None]


def _weight_files(root: Path) -> list[Path]:
    index = root / "diffusion_pytorch_model.safetensors.index.json"
    single = root / "diffusion_pytorch_model.safetensors"
    if index.is_file():
        with open(index) as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index} has no weight_map")
        files = [root / name for name in sorted(set(weight_map.values()))]
        absent = [str(p.name) for p in files if not p.is_file()]
        if absent:
            raise FileNotFoundError(f"shards listed in {index.name} are missing from {root}: {_names(absent)}")
        return files
    if single.is_file():
        return [single]
    found = sorted(p.name for p in root.iterdir())
    raise FileNotFoundError(
        f"no diffusion_pytorch_model.safetensors (or its .index.json for shards) in {root}; found: {_names(found)}"
    )
