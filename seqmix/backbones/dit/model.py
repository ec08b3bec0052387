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

import logging
import os
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from seqmix import layers as mixers
from seqmix.ops.rope import rope_angles

from ..layout import VideoLayout
from .blocks import PatchEmbed, SegmentedDiTBlock, TimestepEmbedding, _AdaLayerNorm, _Plan, timestep_features
from .config import _GLOBAL, DiTConfig
from .global_layer import GlobalLayer
from .loading import load_cogvideox

logger = logging.getLogger(__name__)

__all__ = ["SegmentedDiT"]


class SegmentedDiT(nn.Module):
    """CogVideoX transformer over a segmented long video, with an optional global sequence mixer in every block.

    ``forward(latents [B, F, C, H, W], timestep [B], text [B, S L, D_text], layout) -> [B, F, C_out, H, W]``
    (v-/noise prediction as the checkpoint was trained). Parameter names equal diffusers'
    ``CogVideoXTransformer3DModel``; the global layers live under ``transformer_blocks.{i}.global_layer``.
    See the module docstring for the architecture and parameter counts.
    """

    #: Positions of the blocks' ``[B, n, D]`` token-stream arguments, returned at the same positions (video, text):
    #: what sequence parallelism shards by tokens (:func:`seqmix.parallel.plan.parallelize`; inside the blocks
    #: too, see :class:`~seqmix.backbones.dit.blocks.SegmentedDiTBlock`).
    token_streams: tuple[int, ...] = (0, 1)

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
        return GlobalLayer(mixer, c.inner_dim, c.gate_init, self.mixer_positions, c.mixer_reverse_positions)

    @staticmethod
    def is_global_key(name: str) -> bool:
        """True for parameter / state-dict names of the global layers (absent from CogVideoX checkpoints)."""
        return f".{_GLOBAL}." in f".{name}"

    #: What each training stage trains (:meth:`param_groups` names; :meth:`set_trainable`): ``all`` (the paper's 3 s
    #: stage), ``attention+global`` (its later stages), ``global`` (the global layers alone).
    TRAINABLE: dict[str, tuple[str, ...]] = {"all": ("pretrained", "attention_qkvo", "global_layer"),
                                             "attention+global": ("attention_qkvo", "global_layer"),
                                             "global": ("global_layer",)}

    def set_trainable(self, trainable: str) -> None:
        """Train the parameter groups of ``trainable`` (a :data:`TRAINABLE` key) and freeze the others."""
        if trainable not in self.TRAINABLE:
            raise ValueError(f"trainable={trainable!r}; valid: {', '.join(self.TRAINABLE)}")
        for g, params in self.param_groups().items():
            for p in params.values():
                p.requires_grad_(g in self.TRAINABLE[trainable])

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
        glob = [None] * 8
        if self.config.mixer is not None:
            inter, deinter, rev = idx.interleave, idx.deinterleave, idx.reverse
            # x_bwd = rev(interleave(x_sto)) = x_sto[inter[rev]]; storage(rev(h)) = h[rev[deinter]].
            glob = [inter, deinter, inter[rev], rev[deinter], idx.global_positions, idx.global_positions[rev]]
            # The reversed order keeps the text slots in place: the same boundaries. Both passes read
            # interleave(storage order of that pass), so `inter` maps read positions to the public code's storage
            # positions in both (TTT's eta_order="public" computes its rates there).
            spans = dataclasses.replace(layout.token_spans(), source_index=inter.to(device))
            glob = [t.to(device) for t in glob] + [spans, spans]
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
        return load_cogvideox(cls, path, mixer, strict=strict, dtype=dtype, device=device, **cfg)

    def load_public_ttt(self, state_dict, **kw) -> list[str]:
        """Load the TTT layers and gates of a public ttt-video-dit checkpoint (a flat state dict with its names)
        into this model's global layers; see :func:`seqmix.backbones.dit.public_ttt.load_public_dit_ttt`."""
        from .public_ttt import load_public_dit_ttt

        return load_public_dit_ttt(self, state_dict, **kw)
