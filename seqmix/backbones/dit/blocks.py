"""The modules of one segmented DiT block (CogVideoX's, with diffusers' parameter names): timestep and patch
embeddings, adaLN-zero, window attention, the MLP, and the block that chains them with the global layer."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from seqmix.layers.sharding import HeadShardSpec
from seqmix.layers.spans import TokenSpans
from seqmix.ops.rope import apply_rope

from ..layout import VideoLayout
from .config import _FF_ACTIVATIONS, _TIME_ACTIVATIONS, DiTConfig
from .global_layer import GlobalLayer

__all__ = ["FeedForward", "LayerNormZero", "PatchEmbed", "SegmentedDiTBlock", "TimestepEmbedding", "WindowAttention",
           "timestep_features"]


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
    spans_fwd: TokenSpans | None = None  # frame / segment boundaries of the interleaved order
    spans_bwd: TokenSpans | None = None  # ... and of the reversed order (the same boundaries)


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

    def head_shard_spec(self) -> HeadShardSpec:
        """Tensor parallel by heads: Q/K/V split head-major, per-head q/k norms replicated, ``to_out`` row parallel."""
        heads = {f"{n}.{p}": 0 for n in ("to_q", "to_k", "to_v") for p in ("weight", "bias")
                 if getattr(self, n)._parameters.get(p) is not None}
        local = tuple(f"{n}.{p}" for n in ("norm_q", "norm_k") for p in ("weight", "bias"))
        return HeadShardSpec(head_params=heads, head_local=local, rowwise=("to_out.0",), head_attrs=("heads",))

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


class SegmentedDiTBlock(nn.Module):
    """One CogVideoX block with window attention and an optional global layer (see the module docstring).

    Order: adaLN-zero (norm1) -> window self-attention -> global layer (forward, backward) -> gated residual ->
    adaLN-zero (norm2) -> MLP over ``[text | video]`` -> gated residual.

    Sequence parallelism inside the block: when :attr:`token_shards` is set (by :func:`seqmix.parallel.plan.
    parallelize`), ``vid`` and ``txt`` arrive and leave as this rank's token shards ``[B, ceil(n / P), D]``; the
    adaLN norms, gates and residual adds run on the shards, and the whole sequence is gathered only in front of the
    tensor-parallel regions (attention + global layer, the MLP) and split again after them (Megatron's sequence
    parallelism), so what the block keeps outside those regions divides by P.
    """

    #: The sequence-parallel pair ``split(x [B, n, D]) -> [B, ceil(n / P), D]`` and ``gather(shard, n) -> [B, n, D]``
    #: (autograd functions over the tensor-parallel group), or None: the block sees whole sequences.
    token_shards = None
    #: Under sequence parallelism, the submodules that run on token shards with replicated parameters, and the
    #: positions of their replicated (not token-sharded) tensor inputs (``temb``): each rank's gradients of those
    #: cover its own tokens only, so the plan sums them over the tensor-parallel ranks.
    token_shard_modules = {"norm1": (2,), "norm2": (2,)}

    def __init__(self, c: DiTConfig, global_layer: GlobalLayer | None):
        super().__init__()
        D = c.inner_dim
        self.norm1 = LayerNormZero(c.time_embed_dim, D, c.norm_elementwise_affine, c.norm_eps)
        self.attn1 = WindowAttention(D, c.num_attention_heads, c.attention_head_dim, c.attention_bias)
        self.norm2 = LayerNormZero(c.time_embed_dim, D, c.norm_elementwise_affine, c.norm_eps)
        self.ff = FeedForward(D, c.dropout, c.activation_fn)
        self.global_layer = global_layer

    def forward(self, vid: torch.Tensor, txt: torch.Tensor, temb: torch.Tensor, plan: _Plan):
        """``vid [B, F N, D], txt [B, S L, D]`` (token shards under sequence parallelism), ``temb [B, D_t]`` ->
        ``(vid, txt)`` of the same shapes."""
        sp, lay = self.token_shards, plan.layout
        n_txt = lay.text_tokens

        def whole(v, t):  # in front of a tensor-parallel region: the whole sequence
            return (v, t) if sp is None else (sp.gather(v, lay.video_tokens), sp.gather(t, n_txt))

        def shards(v, t):  # after it: this rank's tokens of the (replicated) result
            return (v, t) if sp is None else (sp.split(v), sp.split(t))

        # 1. attention branch
        nv, nt, gate_msa, t_gate_msa = self.norm1(vid, txt, temb)
        av, at = self.attn1(*whole(nv, nt), plan)
        # 2. global layer on the attention output, before CogVideoX's gate adds it to the stream
        if self.global_layer is not None:
            av, at = self.global_layer(av, at, plan)
        av, at = shards(av, at)
        vid = vid + gate_msa * av
        txt = txt + t_gate_msa * at
        # 3. MLP branch (text and video share the MLP, modulated separately)
        nv, nt, gate_ff, t_gate_ff = self.norm2(vid, txt, temb)
        nv, nt = whole(nv, nt)
        ff = self.ff(torch.cat([nt, nv], dim=1))
        fv, ft = shards(ff[:, n_txt:], ff[:, :n_txt])
        vid = vid + gate_ff * fv
        txt = txt + t_gate_ff * ft
        return vid, txt


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
