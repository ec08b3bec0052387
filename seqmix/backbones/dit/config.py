"""Settings of the segmented video DiT (:class:`DiTConfig`), mapped 1:1 from diffusers'
``CogVideoXTransformer3DModel`` ``config.json`` plus seqmix's global-layer fields."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["DiTConfig"]

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
            ``takes_positions``, i.e. TTT and attention, get them - and LaCT, whose video form ignores them;
            position-free recurrences do not).
        gate_init: initial value of the four tanh-gate vectors per block (paper: 0.1).
        mixer_reverse_positions: positions of the global layer's reversed pass: ``"mirrored"`` (default; by index
            over the reversed sequence, as the public ttt-video-dit code) or ``"own"`` (every token keeps its
            position); see :class:`seqmix.layers.Bidirectional`.
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
    mixer_reverse_positions: str = "mirrored"
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
        if self.mixer_reverse_positions not in ("mirrored", "own"):
            raise ValueError(f"DiTConfig.mixer_reverse_positions must be 'mirrored' or 'own', "
                             f"got {self.mixer_reverse_positions!r}")
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
