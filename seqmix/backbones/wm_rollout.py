"""History-conditioned sampling for :class:`~seqmix.backbones.worldmodel.WorldModel` (diffusion forcing rollout).

1. Context frames are encoded clean (noise level 0) into the carried state in one :meth:`WorldModel.step`.
2. Each new chunk of ``chunk_frames`` frames (default ``model.step_frames``) starts from Gaussian noise and is denoised with the
   project's DDIM sampler (:meth:`seqmix.diffusion.VDiffusion.sample`, noise levels ``t_N .. t_0``) while the state
   stays fixed: every denoiser call is :meth:`WorldModel.denoise` from the same state.
3. The clean chunk is committed: one :meth:`WorldModel.step` at noise level 0 advances the state.

Per generated chunk: ``num_steps`` (x2 with guidance) denoiser calls + one commit; the work and memory of each are
those of one chunk against the carried state, so they stay constant over the rollout for fixed-state mixers.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from seqmix.diffusion import VDiffusion

if TYPE_CHECKING:
    from .worldmodel import WorldModel, WorldModelState

logger = logging.getLogger(__name__)

__all__ = ["sample", "generate_chunk"]


@torch.no_grad()
def generate_chunk(model: "WorldModel", state: "WorldModelState", actions: torch.Tensor | None, *,
                   frames: int = 1, num_steps: int = 50, guidance: float = 1.0,
                   diffusion: VDiffusion | None = None, generator: torch.Generator | None = None,
                   noise: torch.Tensor | None = None) -> tuple[torch.Tensor, "WorldModelState"]:
    """Generate ``frames`` new frames after ``state`` and commit them: ``(frames [B, c, C, H p, W p], new state)``.

    Args:
        actions: the chunk's actions (``[B, c]`` ids or ``[B, c, action_dim]``), None for an action-free model.
        num_steps: DDIM steps per chunk.
        guidance: classifier-free guidance scale on the actions (1.0: no unconditional pass).
        diffusion: the schedule (default :class:`VDiffusion` with its default :class:`ScheduleConfig`).
        generator: for the initial noise; noise: or the initial noise itself ``[B, c, C, H p, W p]``.
    """
    c = model.config
    diffusion = diffusion or VDiffusion()
    p = next(model.parameters())
    B = state.batch
    shape = (B, frames, c.channels, c.grid[0] * c.patch_size, c.grid[1] * c.patch_size)

    def denoise(x: torch.Tensor, t: torch.Tensor, conditional: bool) -> torch.Tensor:
        return model.denoise(x, t[:, None].expand(B, frames), actions, state, conditional=conditional)

    x0 = diffusion.sample(denoise, shape, num_steps=num_steps, guidance=(guidance, guidance), generator=generator,
                          device=p.device, dtype=p.dtype, progress=False, noise=noise)
    _, state = model.step(x0, 0, actions, state)
    return x0, state


@torch.no_grad()
def sample(model: "WorldModel", context_frames: torch.Tensor | None, context_actions: torch.Tensor | None = None,
           future_actions: torch.Tensor | None = None, *, num_frames: int | None = None,
           chunk_frames: int | None = None,
           num_steps: int = 50, guidance: float = 1.0, diffusion: VDiffusion | None = None,
           generator: torch.Generator | None = None, batch: int | None = None,
           return_state: bool = False):
    """Generate frames after a clean context.

    Args:
        context_frames: ``[B, F_ctx, C, H p, W p]`` clean latents (None: start from an empty state; then give
            ``batch``).
        context_actions: actions of the context frames (``[B, F_ctx]`` / ``[B, F_ctx, A]``) for an action model.
        future_actions: actions of the frames to generate (``[B, F_gen]`` / ``[B, F_gen, A]``); they set
            ``F_gen``. For a model without actions give ``num_frames`` instead.
        chunk_frames: frames generated (and committed) together; ``F_gen`` must be a multiple of it (default:
            ``model.step_frames``, one frame unless a mixer steps by chunks of frames).
        num_steps, guidance, diffusion: the DDIM sampler's settings (see :func:`generate_chunk`).
        generator: torch generator for the initial noise of every chunk (same generator state -> same frames).
        return_state: also return the state after the last committed frame.

    Returns:
        ``[B, F_gen, C, H p, W p]`` (and the state with ``return_state``).
    """
    c = model.config
    if context_frames is not None:
        B, _ = model._check_frames(context_frames)
    elif batch is not None:
        B = batch
    elif future_actions is not None and isinstance(future_actions, torch.Tensor):
        B = future_actions.shape[0]
    else:
        raise ValueError("without context frames, give batch= (or future_actions) to size the rollout")
    if c.action_kind is not None:
        if future_actions is None:
            raise ValueError(f"this model is conditioned on {c.action_kind} actions: pass future_actions")
        if not isinstance(future_actions, torch.Tensor) or future_actions.dim() < 2:
            raise ValueError("future_actions must be a tensor [B, F_gen] (discrete) or [B, F_gen, A] (continuous)")
        if num_frames is not None and num_frames != future_actions.shape[1]:
            raise ValueError(f"num_frames={num_frames} but future_actions has {future_actions.shape[1]} frames")
        num_frames = future_actions.shape[1]
    elif future_actions is not None:
        raise ValueError("this model takes no actions (action_kind=None); pass num_frames instead of future_actions")
    if context_frames is None and context_actions is not None:
        raise ValueError("context_actions given without context_frames")
    if not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"the number of frames to generate must be a positive int, got {num_frames!r}")
    if chunk_frames is None:
        chunk_frames = model.step_frames
    if not isinstance(chunk_frames, int) or chunk_frames < 1 or num_frames % chunk_frames:
        raise ValueError(f"chunk_frames={chunk_frames!r} must be a positive int dividing the {num_frames} frames "
                         "to generate")

    state = model.init_state(B)
    if context_frames is not None:  # 1. encode the context clean
        _, state = model.step(context_frames, 0, context_actions, state)
    out = []
    for f in range(0, num_frames, chunk_frames):  # 2.-3. denoise a chunk with the state fixed, then commit it
        acts = None if future_actions is None else future_actions[:, f:f + chunk_frames]
        x0, state = generate_chunk(model, state, acts, frames=chunk_frames, num_steps=num_steps, guidance=guidance,
                                   diffusion=diffusion, generator=generator)
        out.append(x0)
    frames = torch.cat(out, dim=1)
    return (frames, state) if return_state else frames
