"""Configuration of the world-model backbone (:mod:`seqmix.backbones.worldmodel`): the typed config, its size
presets and the world models (the paper's model and its baselines, :data:`WORLD_MODELS`) as per-layer registry specs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["WorldModelConfig", "WorldModelSpec", "WORLD_MODELS", "mixer_stack", "world_model", "world_model_names",
           "SIZE_PRESETS"]


@dataclass(frozen=True)
class WorldModelSpec:
    """One world model of the comparisons: what every layer applies, in order (registry names; the block-wise
    scans get their per-layer block, frame-local attention its window, see :func:`mixer_stack`).

    Attributes:
        name: the model's one name (recipes ``recipes/worldmodel/<name>.yaml``, benchmarks, tables).
        layers: registry names applied in every layer, in order.
        constant_state: its carried state (and per-frame cost) stays constant over a rollout.
        rollout: part of the default rollout benchmark (the paper's efficiency comparison).
        about: one line for tables and help.
    """

    name: str
    layers: tuple[str, ...]
    constant_state: bool
    rollout: bool
    about: str


#: The world models: the paper's model (block-wise SSM + frame-local attention) and the baselines of its
#: comparisons. Every list of models (stacks, recipes, the rollout benchmark, the comparison) derives from it.
WORLD_MODELS: tuple[WorldModelSpec, ...] = (
    WorldModelSpec("blockwise_ssm", ("blockwise_ssm", "frame_local_attn"), True, True,
                   "the paper's model: block-wise Mamba2 scan + frame-local attention"),
    WorldModelSpec("blockwise_ttt", ("blockwise_ttt", "frame_local_attn"), True, True,
                   "block-wise TTT-MLP scan + frame-local attention"),
    WorldModelSpec("frame_local_attn", ("frame_local_attn",), True, True,
                   "frame-local attention only (no memory beyond its window)"),
    WorldModelSpec("causal_transformer", ("full_attn",), False, True,
                   "causal attention over every frame (full context, growing state)"),
    WorldModelSpec("mamba2", ("mamba2",), True, False, "Mamba2 over the token sequence (no spatial blocks)"),
    WorldModelSpec("mamba2_fla", ("mamba2", "frame_local_attn"), True, False,
                   "token-order Mamba2 + frame-local attention"),
)
#: Former names, refused with the current one.
_RENAMED = {"ours": "blockwise_ssm", "causal_window": "frame_local_attn"}


def world_model_names(**where: bool) -> list[str]:
    """Names of :data:`WORLD_MODELS` in its order (the paper's model first), read at call time; ``where`` filters
    on the spec's flags, e.g. ``world_model_names(rollout=True, constant_state=True)``."""
    return [m.name for m in WORLD_MODELS if all(getattr(m, k) == v for k, v in where.items())]


def world_model(name: str) -> WorldModelSpec:
    """The :class:`WorldModelSpec` called ``name`` (a former name is refused with its current one)."""
    for m in WORLD_MODELS:
        if m.name == name:
            return m
    hint = f" (renamed: use {_RENAMED[name]!r})" if name in _RENAMED else ""
    raise ValueError(f"unknown world model {name!r}{hint}; valid: {', '.join(world_model_names())}")


#: Size presets (:meth:`WorldModelConfig.preset`). ``paper``: ~200M parameters with the ``blockwise_ssm`` model
#: (the paper matches every compared model at ~200M); grid / channels are an assumption (8 x 8 latent patches of 16
#: channels).
SIZE_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(dim=32, depth=2, heads=2, cond_dim=32, grid=(2, 2), patch_size=1, channels=4, window_frames=2,
                 chunk_frames=None),
    "cpu-small": dict(dim=64, depth=2, heads=4, cond_dim=64, grid=(4, 4), patch_size=1, channels=4,
                      window_frames=10, chunk_frames=5),
    "paper": dict(dim=768, depth=14, heads=12, cond_dim=512, grid=(8, 8), patch_size=1, channels=16,
                  window_frames=10, chunk_frames=5),
}


def _block_sizes(grid: tuple[int, int]) -> list[tuple[int, int]]:
    """Default per-layer block sizes: square powers of two >= 2 that divide the grid, small to large (cycled over
    the layers; the paper varies the block size from layer to layer), else the whole grid."""
    H, W = grid
    out, b = [], 2
    while H % b == 0 and W % b == 0:
        out.append((b, b))
        b *= 2
    return out or [(H, W)]


def mixer_stack(kind: str, depth: int, *, blocks: list[tuple[int, int]] | None = None, window_frames: int = 10,
                chunk_frames: int | None = 5, grid: tuple[int, int] | None = None,
                ssm_config: dict | None = None, ttt_config: dict | None = None,
                attn_config: dict | None = None) -> list[list[tuple[str, dict]]]:
    """Per-layer mixer specs ``[[(registry name, config), ...] per layer]`` of the world model ``kind`` (a name of
    :data:`WORLD_MODELS`): its layers, each with its config.

    Args:
        kind: a name of :data:`WORLD_MODELS`.
        depth: number of layers.
        blocks: block size ``(b_h, b_w)`` per layer for the block-wise mixers, cycled (default: from ``grid``).
        window_frames, chunk_frames: frame-local attention's ``k`` and ``c`` (paper: 10 and 5).
        ssm_config, ttt_config, attn_config: extra config fields of the SSMs (block-wise or not), the block-wise
            TTT and the attention (frame-local or full).
    """
    spec = world_model(kind)
    if blocks is None:
        blocks = _block_sizes(grid) if grid is not None else [(1, 1)]
    fla = {"window_frames": window_frames, **({"chunk_frames": chunk_frames} if chunk_frames else {}),
           **(attn_config or {})}

    def config(name: str, blk: tuple[int, int]) -> dict:  # another registry layer: its defaults
        return {"blockwise_ssm": lambda: {"block": blk, **(ssm_config or {})},
                "blockwise_ttt": lambda: {"block": blk, **(ttt_config or {})},
                "frame_local_attn": lambda: dict(fla),
                "full_attn": lambda: dict(attn_config or {}),
                "mamba2": lambda: dict(ssm_config or {})}.get(name, dict)()

    return [[(name, config(name, tuple(blocks[i % len(blocks)]))) for name in spec.layers] for i in range(depth)]


@dataclass(kw_only=True)
class WorldModelConfig:
    """Settings of :class:`WorldModel` (see the module docstring). Build one with :meth:`preset`.

    Attributes:
        dim: model width D.
        depth: number of layers.
        heads: heads passed to every mixer (``num_heads`` of :func:`seqmix.layers.build`).
        cond_dim: width D_e of the per-frame conditioning (noise level + action) embedding (default D).
        grid: frame grid ``(H, W)`` in latent patches; latents are ``[B, F, C, H p, W p]``.
        patch_size: spatial patch p.
        channels: latent channels C (input and v-prediction output).
        mixers: per-layer mixer specs: one list per layer of ``(registry name, config dict)`` (or
            ``{"name": ..., "config": ...}``) applied in order, or a name of :data:`WORLD_MODELS` (then built with
            :func:`mixer_stack` from ``blocks``, ``window_frames``, ``chunk_frames``). ``causal=True`` is added to
            every mixer that has a causal option, ``grid`` to every mixer whose config takes one.
        blocks, window_frames, chunk_frames: used when ``mixers`` is a stack name.
        mlp_ratio: MLP hidden width as a multiple of D.
        action_kind: ``None`` (no actions), ``"discrete"`` (learned embedding of ``num_actions`` ids) or
            ``"continuous"`` (small MLP of ``action_dim`` values); added to the noise-level embedding.
        num_actions: number of discrete actions.
        action_dim: width of a continuous action.
        rope: positions for the mixers that take RoPE positions (class attribute ``takes_positions``): ``"3d"``
            (frame, row, column; head dim divisible by 16), ``"1d"`` (token index) or ``"none"``.
        norm_eps: LayerNorm eps.
    """

    dim: int = 64
    depth: int = 2
    heads: int = 4
    cond_dim: int | None = None
    grid: tuple[int, int] = (4, 4)
    patch_size: int = 1
    channels: int = 4
    mixers: str | list = "blockwise_ssm"
    blocks: list[tuple[int, int]] | None = None
    window_frames: int = 10
    chunk_frames: int | None = 5
    mlp_ratio: float = 4.0
    action_kind: str | None = None
    num_actions: int = 0
    action_dim: int = 0
    rope: str = "3d"
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("dim", "depth", "heads", "patch_size", "channels"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"WorldModelConfig.{name} must be a positive int, got {v!r}")
        if self.cond_dim is None:
            self.cond_dim = self.dim
        g = tuple(self.grid)
        if len(g) != 2 or not all(isinstance(v, int) and v >= 1 for v in g):
            raise ValueError(f"WorldModelConfig.grid must be (H, W) positive ints, got {self.grid!r}")
        self.grid = g
        if self.action_kind not in (None, "discrete", "continuous"):
            raise ValueError(f"action_kind must be None, 'discrete' or 'continuous', got {self.action_kind!r}")
        if self.action_kind == "discrete" and self.num_actions < 1:
            raise ValueError(f"discrete actions need num_actions >= 1, got {self.num_actions}")
        if self.action_kind == "continuous" and self.action_dim < 1:
            raise ValueError(f"continuous actions need action_dim >= 1, got {self.action_dim}")
        if self.rope not in ("3d", "1d", "none"):
            raise ValueError(f"rope must be '3d', '1d' or 'none', got {self.rope!r}")
        if isinstance(self.mixers, str):
            self.mixers = mixer_stack(self.mixers, self.depth, blocks=self.blocks, window_frames=self.window_frames,
                                      chunk_frames=self.chunk_frames, grid=self.grid)
        self.mixers = [[_spec(s, i) for s in layer] for i, layer in enumerate(self.mixers)]
        if len(self.mixers) != self.depth:
            raise ValueError(f"mixers lists {len(self.mixers)} layers for depth={self.depth}; give one list per layer")
        if any(not layer for layer in self.mixers):
            raise ValueError("every layer needs at least one mixer")

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[0] * self.grid[1]

    def mixer_names(self) -> list[str]:
        """Distinct registry names used, in order of first use."""
        return list(dict.fromkeys(n for layer in self.mixers for n, _ in layer))

    @classmethod
    def preset(cls, size: str, **overrides: Any) -> "WorldModelConfig":
        """A size preset of :data:`SIZE_PRESETS` (``tiny``, ``cpu-small``, ``paper``) with ``overrides``."""
        if size not in SIZE_PRESETS:
            raise ValueError(f"unknown size preset {size!r}; valid: {', '.join(SIZE_PRESETS)}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"unknown WorldModelConfig field(s) {unknown}; valid: {', '.join(sorted(names))}")
        return cls(**{**SIZE_PRESETS[size], **overrides})


def _spec(s, layer: int) -> tuple[str, dict]:
    if isinstance(s, dict) and set(s) <= {"name", "config"} and "name" in s:
        s = (s["name"], s.get("config") or {})
    if not (isinstance(s, (tuple, list)) and len(s) == 2 and isinstance(s[0], str) and isinstance(s[1], dict)):
        raise TypeError(f"layer {layer}: a mixer spec is (registry name, config dict) or {{'name', 'config'}}, "
                        f"got {s!r}")
    return s[0], dict(s[1])
