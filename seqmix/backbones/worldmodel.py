"""Causal video world-model backbone: diffusion forcing with per-frame noise levels and actions, frame-by-frame
rollout with carried state (Po et al. 2025, "Long-Context State-Space Video World Models", arXiv 2505.20171).

Architecture ("similar to CogVideoX"; the blocks of :mod:`seqmix.backbones.dit` without text)::

    latents [B, F, C, H p, W p] --patchify (p x p conv)--> x [B, F N, D]      frame-major, N = H W tokens per frame
    e_f = TimestepMLP(sinusoid(t_f)) + ActionEmbed(a_f)                       one conditioning vector per frame
    for each layer:                                                           depth layers
        for each mixer m of the layer (e.g. blockwise_ssm, frame_local_attn; or any causal registry layer):
            x = x + gate_m(e) * m(LN(x) (1 + scale_m(e)) + shift_m(e))        adaLN, per token from its frame
        x = x + gate(e) * MLP(LN(x) (1 + scale(e)) + shift(e))
    out = Linear(LN(x) (1 + scale(e)) + shift(e)) --unpatchify--> [B, F, C, H p, W p]   (v-prediction)

Diffusion forcing: every frame has its own noise level ``t_f``, so frame f's tokens are modulated by frame f's
embedding only. Every mixer is causal (token- or frame-causal), so outputs of frames < j never depend on frame j and
the model can roll out frame by frame: :meth:`WorldModel.step` carries each mixer's state (``state=`` /
``return_state=True`` of the layer contract); the result equals one teacher-forced pass. Sampling
(:mod:`seqmix.backbones.wm_rollout`) encodes clean context frames (noise level 0) into the state, then denoises each
new frame with the project's DDIM sampler while the state stays fixed, and commits the clean frame. The settings,
size presets and the list of world models (:data:`~seqmix.backbones.wm_config.WORLD_MODELS`) live in
:mod:`seqmix.backbones.wm_config`; this module holds the network and its state.

Parameters (D width, E conditioning width, M mixers in a layer, r MLP ratio, C channels, p patch, A discrete
actions or a continuous action width): patchify ``D (C p^2 + 1)``; noise-level MLP ``2 E (E + 1)``; actions ``A E``
(discrete) or ``(A + 1) E + E (E + 1)`` (continuous); per layer ``sum(mixers) + (M + 1) (3 D (E + 1) + 2 D) +
2 r D^2 + (r + 1) D``; head ``2 D (E + 1) + 2 D + (D + 1) C p^2`` (:meth:`WorldModel.num_params`; tested). The
``paper`` preset (D 768, 14 layers, E 512) with Mamba2-sized block-wise scans and attention: 202,940,672.

Shape legend: B batch, F frames, C latent channels, (H, W) frame grid in patches, p patch, N = H W, D width.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from seqmix import layers as L

from .dit.blocks import FeedForward, TimestepEmbedding, timestep_features
from .wm_config import (SIZE_PRESETS, WORLD_MODELS, WorldModelConfig, WorldModelSpec, mixer_stack, world_model,
                        world_model_names)

logger = logging.getLogger(__name__)

__all__ = ["WorldModelConfig", "WorldModel", "WorldModelState", "mixer_stack", "SIZE_PRESETS",
           "WORLD_MODELS", "WorldModelSpec", "world_model", "world_model_names",
           "state_nbytes"]


class WorldModelState(NamedTuple):
    """Carried rollout state: ``mixers[layer][i]`` is mixer i's state (None before the first frame), ``frames`` the
    number of frames seen (the position of the next frame), ``batch`` the batch size it was made for."""

    mixers: list[list[Any]]
    frames: int
    batch: int


def state_nbytes(state: Any) -> int:
    """Bytes of every tensor in a (nested) state: the memory a rollout carries between frames."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_nbytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_nbytes(v) for v in state)
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        return sum(state_nbytes(getattr(state, f.name)) for f in dataclasses.fields(state))
    return 0


class FrameAdaLN(nn.Module):
    """adaLN with one modulation per frame: ``(shift, scale, gate) = Linear(SiLU(e_f))`` applied to every token of
    frame f. ``forward(x [B, F N, D], e [B, F, D_e]) -> (LN(x) (1 + scale) + shift, gate)``, both ``[B, F N, D]``
    (the gate is returned broadcastable: ``[B, F, 1, D]`` flattened on use). Parameters ``k D (D_e + 1)``."""

    def __init__(self, cond_dim: int, dim: int, eps: float, outputs: int = 3):
        super().__init__()
        self.outputs = outputs
        self.linear = nn.Linear(cond_dim, outputs * dim)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, Fr = e.shape[:2]
        mod = self.linear(nn.functional.silu(e))[:, :, None]  # [B, F, 1, k D]
        parts = mod.chunk(self.outputs, dim=-1)
        h = self.norm(x).unflatten(1, (Fr, -1))  # [B, F, N, D]
        h = (h * (1 + parts[1]) + parts[0]).flatten(1, 2)
        return h, (parts[2] if self.outputs == 3 else None)


def _gated(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x + gate * y`` with a per-frame gate ``[B, F, 1, D]`` over ``[B, F N, D]`` tokens."""
    Fr = gate.shape[1]
    return x + (gate * y.unflatten(1, (Fr, -1))).flatten(1, 2)


class WorldModelLayer(nn.Module):
    """One layer: every mixer of the spec with its own adaLN and gated residual, then the MLP (see module doc)."""

    def __init__(self, c: WorldModelConfig, specs: list[tuple[str, dict]]):
        super().__init__()
        self.mixers = nn.ModuleList(_build_mixer(c, name, cfg) for name, cfg in specs)
        self.norms = nn.ModuleList(FrameAdaLN(c.cond_dim, c.dim, c.norm_eps) for _ in specs)
        self.takes_positions = [m.takes_positions and c.rope != "none" for m in self.mixers]
        self.norm_mlp = FrameAdaLN(c.cond_dim, c.dim, c.norm_eps)
        self.mlp = FeedForward(c.dim, 0.0, "gelu-approximate") if c.mlp_ratio == 4.0 else nn.Sequential(
            nn.Linear(c.dim, int(round(c.dim * c.mlp_ratio))), nn.GELU(approximate="tanh"),
            nn.Linear(int(round(c.dim * c.mlp_ratio)), c.dim))

    def forward(self, x: torch.Tensor, e: torch.Tensor, positions: torch.Tensor | None, states: list | None,
                return_state: bool) -> tuple[torch.Tensor, list | None]:
        new_states = []
        for i, (mixer, norm) in enumerate(zip(self.mixers, self.norms)):
            h, gate = norm(x, e)
            kw = {"positions": positions} if self.takes_positions[i] and positions is not None else {}
            st = None if states is None else states[i]
            if return_state:
                y, st = mixer(h, state=st, return_state=True, **kw)
                new_states.append(st)
            else:
                y = mixer(h, state=st, **kw) if st is not None else mixer(h, **kw)
            x = _gated(x, gate, y)
        h, gate = self.norm_mlp(x, e)
        x = _gated(x, gate, self.mlp(h))
        return x, (new_states if return_state else None)


def _build_mixer(c: WorldModelConfig, name: str, cfg: dict) -> L.Mixer:
    cls = L.mixer_class(name)  # unknown name -> ValueError listing the valid ones
    cfg = dict(cfg)
    if not cls.can_be_causal():
        raise ValueError(f"world-model mixer {name!r} has no causal form; a frame-by-frame rollout needs causal "
                         "(or frame-causal) mixers")
    if cfg.get("causal") is False:
        raise ValueError(f"world-model mixer {name!r}: causal=False would let frames see the future")
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    if "causal" in fields:
        cfg["causal"] = True
    if "grid" in fields:
        if "grid" in cfg and tuple(cfg["grid"]) != c.grid:
            raise ValueError(f"mixer {name!r} has grid={tuple(cfg['grid'])} but the model's frame grid is {c.grid}")
        cfg["grid"] = c.grid
    mixer = L.build(name, dim=c.dim, num_heads=c.heads, **cfg)
    if not mixer.causal:
        raise ValueError(f"world-model mixer {name!r} is not causal")
    return mixer


class WorldModel(nn.Module):
    """Action-conditioned causal video diffusion backbone (see the module docstring).

    ``forward(latents [B, F, C, H p, W p], noise_levels [B, F], actions) -> v [B, F, C, H p, W p]``;
    ``init_state(B)`` / ``step(frames, noise_levels, actions, state) -> (v, state)`` for the rollout;
    ``sample(...)`` for history-conditioned generation.
    """

    #: Positions of the layers' ``[B, n, D]`` token-stream arguments, returned at the same positions: what sequence
    #: parallelism shards between layers (:func:`seqmix.parallel.plan.parallelize`).
    token_streams: tuple[int, ...] = (0,)

    def __init__(self, config: WorldModelConfig):
        super().__init__()
        if not isinstance(config, WorldModelConfig):
            raise TypeError(f"WorldModel expects a WorldModelConfig, got {type(config).__name__}")
        c = self.config = config
        p, D, E = c.patch_size, c.dim, c.cond_dim
        # 1. patchify, conditioning (noise level + action)
        self.patch_embed = nn.Conv2d(c.channels, D, kernel_size=p, stride=p)
        self.time_embedding = TimestepEmbedding(E, E, "silu")
        if c.action_kind == "discrete":
            self.action_embedding: nn.Module | None = nn.Embedding(c.num_actions, E)
        elif c.action_kind == "continuous":
            self.action_embedding = nn.Sequential(nn.Linear(c.action_dim, E), nn.SiLU(), nn.Linear(E, E))
        else:
            self.action_embedding = None
        # 2. layers
        self.layers = nn.ModuleList(WorldModelLayer(c, specs) for specs in c.mixers)
        # 3. output head: adaLN (shift, scale) + linear to p x p x C per token
        self.norm_out = FrameAdaLN(E, D, c.norm_eps, outputs=2)
        self.proj_out = nn.Linear(D, p * p * c.channels)
        self.gradient_checkpointing = False  # recompute each layer in backward (set by seqmix.parallel's plan)

    # ------------------------------------------------------------------------------------------------ info
    @property
    def step_frames(self) -> int:
        """Frames per causal step of the whole stack (the least common multiple over its mixers: a chunked
        frame-local attention steps by its chunk of frames, every other mixer by a frame or less). Rollouts and
        sampling generate and commit this many frames at a time; every call with carried state but the last must
        hold a multiple of it."""
        n = self.config.tokens_per_frame
        return math.lcm(1, *(max(1, m.step_tokens // n) for layer in self.layers for m in layer.mixers))

    def num_params(self) -> int:
        return sum(q.numel() for q in self.parameters())

    def state_size(self, frames: int) -> int:
        """Carried-state elements per sequence after ``frames`` frames (sum of the mixers' ``state_size``)."""
        n = frames * self.config.tokens_per_frame
        return sum(m.state_size(n) for layer in self.layers for m in layer.mixers)

    # ------------------------------------------------------------------------------------------------ inputs
    def _check_frames(self, latents: torch.Tensor) -> tuple[int, int]:
        c = self.config
        if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
            raise TypeError(f"latents must be a floating-point tensor [B, F, C, H, W], got "
                            f"{getattr(latents, 'dtype', type(latents).__name__)}")
        H, W = c.grid[0] * c.patch_size, c.grid[1] * c.patch_size
        if latents.dim() != 5 or latents.shape[2:] != (c.channels, H, W):
            raise ValueError(f"latents must be [B, F, C={c.channels}, H={H}, W={W}] (grid {c.grid} of "
                             f"{c.patch_size}x{c.patch_size} patches), got {tuple(latents.shape)}")
        if latents.shape[1] < 1:
            raise ValueError("latents have no frames (F=0)")
        return latents.shape[0], latents.shape[1]

    def _noise_levels(self, t, B: int, Fr: int, device) -> torch.Tensor:
        t = torch.as_tensor(t, device=device)
        if t.dim() == 0:
            t = t.expand(B, Fr)
        elif t.shape == (B,):
            t = t[:, None].expand(B, Fr)
        if t.shape != (B, Fr):
            raise ValueError(f"noise_levels must be a scalar, [B={B}] or [B={B}, F={Fr}], got {tuple(t.shape)}")
        if t.is_complex() or t.dtype == torch.bool or bool((t < 0).any()):
            raise ValueError("noise_levels must be real and >= 0 (0 = clean frame)")
        return t

    def _action_embed(self, actions, B: int, Fr: int, device, dtype) -> torch.Tensor | None:
        c = self.config
        if c.action_kind is None:
            if actions is not None:
                raise ValueError("this model takes no actions (action_kind=None); pass actions=None")
            return None
        if actions is None:
            raise ValueError(f"this model is conditioned on {c.action_kind} actions; pass actions for every frame")
        if not isinstance(actions, torch.Tensor):
            raise TypeError(f"actions must be a torch.Tensor, got {type(actions).__name__}")
        if c.action_kind == "discrete":
            if actions.is_floating_point() or actions.is_complex() or actions.dtype == torch.bool:
                raise TypeError(f"discrete actions must be integer ids [B, F], got dtype {actions.dtype}")
            if actions.shape != (B, Fr):
                raise ValueError(f"discrete actions must be [B={B}, F={Fr}] (one id per frame), got "
                                 f"{tuple(actions.shape)}")
            if actions.numel() and (int(actions.min()) < 0 or int(actions.max()) >= c.num_actions):
                raise ValueError(f"action ids must lie in [0, {c.num_actions}), got [{int(actions.min())}, "
                                 f"{int(actions.max())}]")
            return self.action_embedding(actions.to(device).long()).to(dtype)
        if not actions.is_floating_point():
            raise TypeError(f"continuous actions must be a floating-point tensor [B, F, {c.action_dim}], "
                            f"got dtype {actions.dtype}")
        if actions.shape != (B, Fr, c.action_dim):
            raise ValueError(f"continuous actions must be [B={B}, F={Fr}, action_dim={c.action_dim}], got "
                             f"{tuple(actions.shape)}")
        return self.action_embedding(actions.to(device=device, dtype=dtype))

    def _positions(self, f0: int, Fr: int, device) -> torch.Tensor | None:
        c = self.config
        if c.rope == "none":
            return None
        H, W = c.grid
        if c.rope == "1d":
            return torch.arange(f0 * H * W, (f0 + Fr) * H * W, device=device)
        f, r, w = torch.meshgrid(torch.arange(f0, f0 + Fr), torch.arange(H), torch.arange(W), indexing="ij")
        return torch.stack([f, r, w], dim=-1).reshape(-1, 3).to(device)  # [F N, 3] (frame, row, column)

    # ------------------------------------------------------------------------------------------------ forward
    def _run(self, latents, noise_levels, actions, states, f0: int, return_state: bool, drop_actions: bool = False):
        c = self.config
        B, Fr = self._check_frames(latents)
        p = c.patch_size
        t = self._noise_levels(noise_levels, B, Fr, latents.device)
        # 1. per-frame conditioning e [B, F, D_e]
        e = self.time_embedding(timestep_features(t.reshape(-1), c.cond_dim, True, 0).to(latents.dtype))
        e = e.view(B, Fr, -1)
        if drop_actions:  # the unconditional branch of classifier-free guidance
            if c.action_kind is None:
                raise ValueError("guidance needs an action-conditioned model")
        else:
            a = self._action_embed(actions, B, Fr, latents.device, latents.dtype)
            if a is not None:
                e = e + a
        # 2. patchify: [B, F, C, H p, W p] -> [B, F N, D] (frame-major, row-major inside a frame)
        x = self.patch_embed(latents.flatten(0, 1))  # [B F, D, H, W]
        x = x.flatten(2).transpose(1, 2).reshape(B, -1, c.dim)
        pos = self._positions(f0, Fr, latents.device)
        # 3. layers
        new_states = []
        ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            st = None if states is None else states[i]
            if ckpt:
                x, st = checkpoint(layer, x, e, pos, st, return_state, use_reentrant=False)
            else:
                x, st = layer(x, e, pos, st, return_state)
            new_states.append(st)
        # 4. head and unpatchify
        h, _ = self.norm_out(x, e)
        out = self.proj_out(h)  # [B, F N, p p C]
        H, W = c.grid
        out = out.reshape(B, Fr, H, W, p, p, c.channels).permute(0, 1, 6, 2, 4, 3, 5)
        return out.reshape(B, Fr, c.channels, H * p, W * p), (new_states if return_state else None)

    def forward(self, latents: torch.Tensor, noise_levels: torch.Tensor | int,
                actions: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced pass: ``latents [B, F, C, H p, W p]`` (frame f noised to level ``noise_levels[:, f]``;
        0 = clean), ``noise_levels [B, F]`` (or ``[B]`` / a scalar for all frames), ``actions`` (discrete
        ``[B, F]`` ids or continuous ``[B, F, action_dim]``; ``actions[:, f]`` conditions frame f) ->
        v-prediction ``[B, F, C, H p, W p]``."""
        return self._run(latents, noise_levels, actions, None, 0, False)[0]

    # ------------------------------------------------------------------------------------------------ rollout
    def init_state(self, batch: int) -> WorldModelState:
        """Empty rollout state for ``batch`` sequences (no frame seen yet)."""
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        return WorldModelState([[None] * len(layer.mixers) for layer in self.layers], 0, batch)

    def _check_state(self, state, B: int) -> WorldModelState:
        if not isinstance(state, WorldModelState):
            raise TypeError(f"state must be a WorldModelState (model.init_state(batch) or what step returned), "
                            f"got {type(state).__name__}")
        if state.batch != B:
            raise ValueError(f"state was made for batch {state.batch}, frames have batch {B}")
        if len(state.mixers) != len(self.layers):
            raise ValueError(f"state has {len(state.mixers)} layers, the model {len(self.layers)}")
        return state

    def step(self, frames: torch.Tensor, noise_levels: torch.Tensor | int, actions: torch.Tensor | None,
             state: WorldModelState) -> tuple[torch.Tensor, WorldModelState]:
        """One rollout step over the next frame(s): ``frames [B, c, C, H p, W p]`` (c >= 1), their noise levels
        and actions as in :meth:`forward` -> ``(v [B, c, C, H p, W p], state after these frames)``.

        The input state is not modified, so a step can be repeated from it (denoising a frame at several noise
        levels with the state fixed). Stepping through a clip frame by frame (or chunk by chunk) gives the
        teacher-forced :meth:`forward` output; the carried state is each mixer's (constant in the number of
        frames for recurrent / windowed mixers)."""
        B, Fr = self._check_frames(frames)
        state = self._check_state(state, B)
        out, new = self._run(frames, noise_levels, actions, state.mixers, state.frames, True)
        return out, WorldModelState(new, state.frames + Fr, B)

    def denoise(self, frames: torch.Tensor, noise_levels, actions, state: WorldModelState, *,
                conditional: bool = True) -> torch.Tensor:
        """:meth:`step`'s output without the new state (cheaper: the mixers return no state), for the sampler's
        denoising calls; ``conditional=False`` drops the actions (classifier-free guidance)."""
        B, _ = self._check_frames(frames)
        state = self._check_state(state, B)
        return self._run(frames, noise_levels, None if not conditional else actions, state.mixers, state.frames, False,
                         drop_actions=not conditional)[0]

    def sample(self, context_frames: torch.Tensor | None, context_actions: torch.Tensor | None = None,
               future_actions: torch.Tensor | None = None, **kw: Any) -> torch.Tensor:
        """History-conditioned generation; see :func:`seqmix.backbones.wm_rollout.sample` for the arguments.
        Returns the generated frames ``[B, F_gen, C, H p, W p]``."""
        from .wm_rollout import sample

        return sample(self, context_frames, context_actions, future_actions, **kw)
