"""Retrieval evaluation of a world model (Po et al. 2025, arXiv 2505.20171, "retrieval"): the exploration of a maze
trajectory is the clean context, the return path is generated from its actions by the rollout sampler
(:func:`seqmix.backbones.wm_rollout.sample`'s steps: encode the context, then denoise and commit chunk by chunk),
and every generated frame is scored against the ground truth (PSNR and SSIM from torchmetrics; LPIPS only where
torchvision and its AlexNet weights are already installed: nothing is downloaded) and binned by its distance in
frames to the last time that place was seen (the data's ``distance``). Also the per-frame generation time and the
carried state's bytes.

Shapes: frames ``[B, F, 3, H, W]`` in [-1, 1], actions ``[B, F]``, distance ``[B, F]`` (-1: never seen before);
the first ``E`` frames are the context, the remaining ``R`` are generated.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from seqmix.backbones.wm_rollout import generate_chunk
from seqmix.backbones.worldmodel import WorldModel, state_nbytes
from seqmix.diffusion import VDiffusion

logger = logging.getLogger(__name__)

__all__ = ["RetrievalResult", "retrieval", "MemoryProbe", "memory_probe", "bin_by_distance", "frame_scores",
           "lpips_available", "write_rollout_gif"]


@dataclass
class RetrievalResult:
    """Per generated frame (flattened over the batch, return-frame-major within an example): ``psnr``, ``ssim``,
    ``lpips`` (empty when unavailable) and ``distance``; ``generated [B, R, 3, H, W]``; ``seconds_per_frame``
    (wall time of the rollout divided by the frames generated, batch included); ``state_bytes`` after the context
    and after the last generated frame (per batch)."""

    psnr: list[float]
    ssim: list[float]
    distance: list[int]
    generated: torch.Tensor
    seconds_per_frame: float
    state_bytes: tuple[int, int]
    lpips: list[float] = field(default_factory=list)
    peak_memory_bytes: int | None = None


def lpips_available() -> bool:
    """True when torchmetrics' LPIPS can run without a download (torchvision installed, AlexNet weights cached)."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return False
    ckpt = Path(torch.hub.get_dir()) / "checkpoints"
    return ckpt.is_dir() and any(p.name.startswith("alexnet") for p in ckpt.iterdir())


def frame_scores(pred: torch.Tensor, target: torch.Tensor, lpips: bool = False) -> dict[str, torch.Tensor]:
    """Per-frame PSNR (dB, capped at 100), SSIM (and LPIPS) of ``pred`` vs ``target`` ``[N, 3, H, W]`` in [-1, 1]
    -> ``{name: [N]}``."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(f"pred and target must be [N, C, H, W] of one shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    pred, target = pred.float().clamp(-1, 1), target.float()
    # a bit-exact frame has infinite PSNR: capped at 100 dB so that means over frames stay finite
    out = {"psnr": peak_signal_noise_ratio(pred, target, data_range=2.0, reduction="none", dim=(1, 2, 3)).clamp(max=100.0)}
    side = min(pred.shape[-2:])
    k = max(3, min(7, side - (1 - side % 2)))  # an odd window that fits frames as small as 8 pixels
    out["ssim"] = structural_similarity_index_measure(pred, target, data_range=2.0, kernel_size=k, reduction="none")
    if lpips:
        from torchmetrics.functional.image import learned_perceptual_image_patch_similarity as lp

        out["lpips"] = torch.stack([lp(p[None], t[None], net_type="alex") for p, t in zip(pred, target)])
    return out


@torch.no_grad()
def retrieval(model: WorldModel, frames: torch.Tensor, actions: torch.Tensor, distance: torch.Tensor,
              explore_frames: int, *, num_steps: int = 10, diffusion: VDiffusion | None = None, seed: int = 0,
              lpips: bool | None = None) -> RetrievalResult:
    """Generate the return path after the clean exploration and score it (see the module docstring).

    Args:
        frames, actions, distance: a batch of whole trajectories (shapes in the module docstring).
        explore_frames: E, the context length; ``E`` and ``F - E`` must be multiples of ``model.step_frames``.
        num_steps: DDIM steps per generated chunk.
        seed: seed of the sampler's initial noise (same seed, same frames).
        lpips: score LPIPS too (None: where :func:`lpips_available`).
    """
    if frames.dim() != 5 or actions.shape != frames.shape[:2] or distance.shape != frames.shape[:2]:
        raise ValueError(f"frames must be [B, F, C, H, W] with actions and distance [B, F], got "
                         f"{tuple(frames.shape)}, {tuple(actions.shape)}, {tuple(distance.shape)}")
    B, F_ = actions.shape
    c = model.step_frames
    if not 0 < explore_frames < F_ or explore_frames % c or (F_ - explore_frames) % c:
        raise ValueError(f"explore_frames={explore_frames} must lie in (0, {F_}) with it and the {F_ - explore_frames}"
                         f" return frames multiples of the model's step of {c} frames")
    lpips = lpips_available() if lpips is None else lpips
    diffusion = diffusion or VDiffusion()
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    frames, actions = frames.to(dev), actions.to(dev)
    g = torch.Generator(device=dev).manual_seed(seed)
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    state = model.init_state(B)
    _, state = model.step(frames[:, :explore_frames], 0, actions[:, :explore_frames], state)
    ctx_bytes = state_nbytes(state.mixers)
    out = []
    if cuda:
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    for f in range(explore_frames, F_, c):
        x0, state = generate_chunk(model, state, actions[:, f:f + c], frames=c, num_steps=num_steps,
                                   diffusion=diffusion, generator=g)
        out.append(x0)
    if cuda:
        torch.cuda.synchronize(dev)
    secs = (time.perf_counter() - t0) / (F_ - explore_frames)
    model.train(was_training)
    gen = torch.cat(out, 1).clamp(-1, 1)  # [B, R, C, H, W]
    truth = frames[:, explore_frames:]
    s = frame_scores(gen.flatten(0, 1), truth.flatten(0, 1), lpips=lpips)
    return RetrievalResult(
        psnr=s["psnr"].tolist(), ssim=s["ssim"].tolist(), lpips=s["lpips"].tolist() if lpips else [],
        distance=distance[:, explore_frames:].flatten().tolist(), generated=gen.cpu(), seconds_per_frame=secs,
        state_bytes=(ctx_bytes, state_nbytes(state.mixers)),
        peak_memory_bytes=int(torch.cuda.max_memory_allocated(dev)) if cuda else None)


@dataclass
class MemoryProbe:
    """Per return frame (flattened over the batch, return-frame-major within an example): ``distance`` (frames
    since the place was last seen; -1 never), ``beyond`` (distance > the window) and, for the model and each
    model-free reference, ``psnr`` / ``ssim`` lists: ``{"model": [...], "mean_frame": [...], "last_context":
    [...], "best_window": [...]}``. :meth:`summary` splits them within / beyond the window."""

    distance: list[int]
    window: int
    psnr: dict[str, list[float]]
    ssim: dict[str, list[float]]

    def summary(self) -> dict[str, dict[str, float]]:
        """``{source: {"psnr_within", "psnr_beyond", "ssim_within", "ssim_beyond"}}``: means over the return frames
        whose recall distance is within / beyond the window (frames never seen before are left out); NaN where a
        side has no frame."""
        keep = [i for i, d in enumerate(self.distance) if d >= 0]
        out = {}
        for src in self.psnr:
            row = {}
            for side, pick in (("within", lambda d: d <= self.window), ("beyond", lambda d: d > self.window)):
                idx = [i for i in keep if pick(self.distance[i])]
                for metric, vals in (("psnr", self.psnr[src]), ("ssim", self.ssim[src])):
                    row[f"{metric}_{side}"] = sum(vals[i] for i in idx) / len(idx) if idx else float("nan")
            out[src] = row
        return out


@torch.no_grad()
def memory_probe(model: WorldModel, frames: torch.Tensor, actions: torch.Tensor, distance: torch.Tensor,
                 explore_frames: int, window: int, *, diffusion: VDiffusion | None = None,
                 seed: int = 0) -> MemoryProbe:
    """The memory metric: every return frame predicted in ONE step at the maximum noise level (nothing of the frame
    itself is visible; the whole return path is at that level), the exploration clean, in one teacher-forced pass;
    scored (PSNR, SSIM) against the truth beside three model-free references that need no memory: the exploration's
    mean frame, its last frame, and the best (highest-PSNR, an oracle) of its last ``window`` frames.

    A model can beat the references on return frames beyond the window only by recalling the place from earlier
    in the exploration; sampled retrieval (:func:`retrieval`) adds sampling error on top. Shapes as
    :func:`retrieval`; ``window``: the frame-local attention window ``k`` (the within / beyond split).
    """
    if frames.dim() != 5 or actions.shape[:2] != frames.shape[:2] or distance.shape != frames.shape[:2]:
        raise ValueError(f"frames must be [B, F, C, H, W] with actions and distance [B, F], got "
                         f"{tuple(frames.shape)}, {tuple(actions.shape)}, {tuple(distance.shape)}")
    B, F_ = distance.shape
    E = explore_frames
    if not 0 < E < F_ or window < 1:
        raise ValueError(f"explore_frames={E} must lie in (0, {F_}) and window={window} be >= 1")
    diffusion = diffusion or VDiffusion()
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    frames, actions = frames.to(dev), actions.to(dev)
    t_max = diffusion.num_timesteps - 1
    levels = torch.zeros(B, F_, dtype=torch.long, device=dev)
    levels[:, E:] = t_max
    g = torch.Generator(device=dev).manual_seed(seed)
    noise = torch.randn(frames.shape, generator=g, device=dev, dtype=frames.dtype)
    flat = lambda x: x.flatten(0, 1)  # noqa: E731 - the schedule takes one level per leading index
    x_t = diffusion.add_noise(flat(frames), flat(noise), flat(levels)).view_as(frames)
    x_t = torch.where(levels[:, :, None, None, None] > 0, x_t, frames)  # the schedule's level 0 is not exactly clean
    v = model(x_t, levels, actions)
    pred = diffusion.x0_from_v(flat(x_t).float(), flat(v).float(), flat(levels)).view(frames.shape)
    pred = pred[:, E:].clamp(-1, 1)  # [B, R, C, H, W]
    model.train(was_training)
    truth, ctx = frames[:, E:].float(), frames[:, :E].float()
    R = F_ - E
    refs = {"model": pred,
            "mean_frame": ctx.mean(1, keepdim=True).expand_as(truth),
            "last_context": ctx[:, -1:].expand_as(truth)}
    psnr = {k: frame_scores(x.flatten(0, 1), truth.flatten(0, 1))["psnr"].tolist() for k, x in refs.items()}
    ssim = {k: frame_scores(x.flatten(0, 1), truth.flatten(0, 1))["ssim"].tolist() for k, x in refs.items()}
    # best of the window: per return frame, the highest-PSNR of the last `window` exploration frames (an oracle)
    cand = ctx[:, -window:]  # [B, w, C, H, W]
    w = cand.shape[1]
    pairs = frame_scores(cand[:, None].expand(B, R, w, *cand.shape[2:]).flatten(0, 2),
                         truth[:, :, None].expand(B, R, w, *truth.shape[2:]).flatten(0, 2))
    best = pairs["psnr"].view(B * R, w).argmax(1)
    psnr["best_window"] = pairs["psnr"].view(B * R, w).gather(1, best[:, None])[:, 0].tolist()
    ssim["best_window"] = pairs["ssim"].view(B * R, w).gather(1, best[:, None])[:, 0].tolist()
    return MemoryProbe(distance=distance[:, E:].flatten().tolist(), window=window, psnr=psnr, ssim=ssim)


def bin_by_distance(values: list[float], distance: list[int], width: int, max_distance: int | None = None
                    ) -> list[dict]:
    """Mean of ``values`` per distance bin ``(lo, lo + width]`` for ``lo = 0, width, ...`` (frames never seen
    before, distance < 1, are left out; empty bins are left out) -> ``[{"lo", "hi", "n", "mean"}]``."""
    if width < 1:
        raise ValueError(f"bin width must be >= 1 frame, got {width}")
    if len(values) != len(distance):
        raise ValueError(f"{len(values)} values but {len(distance)} distances")
    top = max([d for d in distance if d > 0], default=0) if max_distance is None else max_distance
    bins = []
    for lo in range(0, top, width):
        sel = [v for v, d in zip(values, distance) if lo < d <= lo + width]
        if sel:
            bins.append({"lo": lo, "hi": lo + width, "n": len(sel), "mean": sum(sel) / len(sel)})
    return bins


def write_rollout_gif(generated: torch.Tensor, truth: torch.Tensor, path: str | Path, scale: int = 4,
                      fps: int = 4) -> Path:
    """Animated GIF of a rollout: generated frames (left) beside the ground truth (right), ``[R, 3, H, W]`` each in
    [-1, 1]; written to a temporary file and renamed."""
    import numpy as np
    from PIL import Image

    if generated.shape != truth.shape:
        raise ValueError(f"generated {tuple(generated.shape)} and truth {tuple(truth.shape)} differ in shape")

    def rgb(x: torch.Tensor) -> np.ndarray:
        a = ((x.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        return np.repeat(np.repeat(a, scale, 0), scale, 1)

    pics = []
    for g, t in zip(generated, truth):
        a, b = rgb(g), rgb(t)
        canvas = np.full((a.shape[0], a.shape[1] * 2 + scale, 3), 255, np.uint8)
        canvas[:, :a.shape[1]], canvas[:, a.shape[1] + scale:] = a, b
        pics.append(Image.fromarray(canvas))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pics[0].save(tmp, format="GIF", save_all=True, append_images=pics[1:], duration=int(1000 / fps), loop=0)
    tmp.replace(path)
    return path
