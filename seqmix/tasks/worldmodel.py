"""Training of the action-conditioned video world model (:class:`~seqmix.backbones.worldmodel.WorldModel`) on maze
trajectories, as Po et al. 2025 (arXiv 2505.20171) train every compared model: diffusion forcing (every frame its
own noise level), the long-context scheme (with probability ``long_context_prob`` a random prefix longer than
``min_prefix`` of the clip is clean, noise level 0, and only the noised frames carry loss), v-prediction on the
project's schedule (:mod:`seqmix.diffusion`), AdamW.

Batches are dicts of :class:`~seqmix.data.maze_shards.MazeClips` items plus ``index [B]`` (example ids): ``frames
[B, F, 3, H, W]`` in [-1, 1] (pixel space: the frames are the latents, no VAE), ``actions [B, F]``, ``distance
[B, F]``, ``phase [B, F]``. All randomness of a training step (noise levels, noise, prefix) is drawn per example
from ``(seed, step, index)`` (:func:`~seqmix.training.example_generator`), so 1-process and N-process runs and
resumed runs see the same noise; the data order is :class:`~seqmix.training.ResumableLoader`'s.

Validation (``val/...``, fixed draws): ``loss`` (diffusion forcing + long-context draws as in training, at fixed
noise), ``loss_return`` (exploration clean, every return frame at each of ``eval_timesteps``: the denoising loss of
the frames that must be recalled), ``psnr_return`` (PSNR of the one-step clean prediction of those frames).
Retrieval by sampling (autoregressive rollout) is :mod:`seqmix.tasks.worldmodel_eval`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import lightning as pl
import torch

from seqmix.backbones.worldmodel import WorldModel, WorldModelConfig
from seqmix.data.maze_data import MazeDataConfig
from seqmix.diffusion import ScheduleConfig, VDiffusion
from seqmix.parallel.lightning import MixedLayoutClipping
from seqmix.training import example_generator, load_checkpoint

from .video import _Indexed, _VideoData

logger = logging.getLogger(__name__)

__all__ = ["WorldModelTask", "MazeData", "draw_training_noise", "masked_v_loss"]


def draw_training_noise(frames_shape: tuple[int, ...], num_timesteps: int, g: torch.Generator, *,
                        long_context_prob: float, min_prefix: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One example's draws: ``(t [F] int64, noise [F, C, H, W], loss_mask [F] bool)``.

    Diffusion forcing: ``t_f`` uniform in ``[0, num_timesteps)``, independently per frame. With probability
    ``long_context_prob`` a prefix of ``L`` frames, ``L`` uniform over the lengths ``> min_prefix * F`` that leave
    at least one noised frame, is clean: ``t = 0`` there (the caller feeds the clean frames) and the mask is False.
    """
    F_ = frames_shape[0]
    t = torch.randint(0, num_timesteps, (F_,), generator=g)
    noise = torch.randn(frames_shape, generator=g)
    mask = torch.ones(F_, dtype=torch.bool)
    use_prefix = bool(torch.rand((), generator=g) < long_context_prob)
    lo = math.floor(min_prefix * F_) + 1  # "longer than half": strictly more than min_prefix * F frames
    L = int(torch.randint(lo, F_, (), generator=g)) if F_ - lo >= 1 else 0  # draw anyway: fixed RNG consumption
    if use_prefix and L > 0:
        t[:L] = 0
        mask[:L] = False
    return t, noise, mask


def masked_v_loss(v_hat: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                  count: torch.Tensor | float | None = None) -> torch.Tensor:
    """Mean squared error of ``v_hat`` vs ``v`` (``[B, F, ...]``) over the frames where ``mask [B, F]`` is True.

    ``count``: what the summed error is divided by (default ``mask.sum()``, at least 1). Data-parallel training
    passes the mean count over the processes, so that the processes' averaged gradients are those of the loss over
    the global batch (every loss frame weighs the same, however the frames fall on the processes)."""
    err = (v_hat.float() - v.float()).pow(2).flatten(2).mean(-1)  # [B, F]
    m = mask.to(err.dtype)
    denom = m.sum() if count is None else torch.as_tensor(count, dtype=err.dtype, device=err.device)
    return (err * m).sum() / denom.clamp_min(1.0)


class WorldModelTask(MixedLayoutClipping, pl.LightningModule):
    """Train / evaluate a :class:`WorldModel` with diffusion forcing and long-context training.

    Args:
        model: the backbone's config (``mixers``: a world model name of :data:`~seqmix.backbones.wm_config.WORLD_MODELS` or
            per-layer specs). ``channels``, ``grid * patch_size`` and ``num_actions`` must fit the data.
        schedule: diffusion noise schedule (v-prediction; the project's default).
        long_context_prob: probability of the clean-prefix scheme per example (paper: 0.5; 0 = plain diffusion
            forcing).
        min_prefix: the clean prefix is longer than this fraction of the clip (paper: one half).
        lr, betas, weight_decay: AdamW settings. warmup_steps: linear warm-up; cosine: cosine decay to 0 after it.
        eval_timesteps: noise levels of the return frames in ``val/loss_return`` and ``val/psnr_return``.
        init_from: a Lightning checkpoint of a previous stage to take the weights from (verified; optimizer state
            is not taken), e.g. the 400-frame stage for the 800-frame one.
        seed: seed of the per-example training / evaluation randomness.
        fsdp_precision: under a model-parallel strategy (:class:`seqmix.parallel.lightning.ModelParallel`),
            ``"full"`` (FSDP2 gathers and computes in the parameters' dtype) or ``"bf16"`` (bf16 gather and compute,
            fp32 gradient reduction and master weights; :func:`seqmix.parallel.plan.parallelize`).
        sequence_parallel: under a model-parallel strategy, shard the frame tokens over the tensor-parallel ranks
            between layers (what per-layer checkpointing keeps divides by the tensor-parallel size).
        activation_checkpointing: recompute every layer in backward in training (keeps each layer's input only;
            about one more forward of compute).
    """

    def __init__(self, model: WorldModelConfig, *, schedule: ScheduleConfig | None = None,
                 long_context_prob: float = 0.5, min_prefix: float = 0.5, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.01, warmup_steps: int = 0,
                 cosine: bool = False, eval_timesteps: list[int] | None = None, init_from: str | None = None,
                 seed: int = 0, fsdp_precision: Literal["full", "bf16"] = "full", sequence_parallel: bool = False,
                 activation_checkpointing: bool = False):
        super().__init__()
        if not 0.0 <= long_context_prob <= 1.0:
            raise ValueError(f"model.init_args.long_context_prob must lie in [0, 1], got {long_context_prob}")
        if not 0.0 <= min_prefix < 1.0:
            raise ValueError(f"model.init_args.min_prefix must lie in [0, 1), got {min_prefix}")
        if lr <= 0 or warmup_steps < 0:
            raise ValueError(f"model.init_args.lr must be > 0 and warmup_steps >= 0, got {lr}, {warmup_steps}")
        self.save_hyperparameters()
        self.diffusion = VDiffusion(schedule)
        self.eval_timesteps = list(eval_timesteps or [500, 900])
        bad = [t for t in self.eval_timesteps if not 0 <= t < self.diffusion.num_timesteps]
        if bad:
            raise ValueError(f"model.init_args.eval_timesteps {bad} outside [0, {self.diffusion.num_timesteps})")
        try:
            self.model = WorldModel(model)
        except (ValueError, TypeError) as e:
            raise ValueError(f"model.init_args.model: {e}") from e
        self.model.gradient_checkpointing = activation_checkpointing
        if init_from:
            if not Path(init_from).is_file():
                raise FileNotFoundError(f"model.init_args.init_from={init_from!r} does not exist")
            self.load_state_dict(load_checkpoint(init_from)["state_dict"])  # digest-verified; strict

    # ------------------------------------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is None or not hasattr(dm, "maze_spec"):
            raise ValueError("WorldModelTask needs a maze data module (seqmix.tasks.MazeData)")
        check_fits(self.model.config, dm.maze_spec())

    def configure_model(self) -> None:
        """Under a model-parallel strategy (:class:`seqmix.parallel.lightning.ModelParallel`) shard the world model
        with the strategy's mesh: FSDP2 x tensor parallel by heads (sequence parallel between layers if set)."""
        if self.device_mesh is None:
            return
        from seqmix.parallel.plan import parallelize

        h = self.hparams
        parallelize(self.model, self.device_mesh, fsdp_precision=h.fsdp_precision,
                    sequence_parallel=h.sequence_parallel)

    # ------------------------------------------------------------------------------------------------ steps
    def _draw(self, batch: dict, step: int, long_context_prob: float):
        x0 = batch["frames"]
        ts, noise, masks = [], [], []
        for i in batch["index"].tolist():
            g = example_generator(self.hparams.seed, step, int(i))
            t, n, m = draw_training_noise(tuple(x0.shape[1:]), self.diffusion.num_timesteps, g,
                                          long_context_prob=long_context_prob, min_prefix=self.hparams.min_prefix)
            ts.append(t), noise.append(n), masks.append(m)
        dev = x0.device
        return torch.stack(ts).to(dev), torch.stack(noise).to(x0), torch.stack(masks).to(dev)

    def noised_inputs(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, mask: torch.Tensor):
        """Model input ``x_t [B, F, ...]`` and target ``v``: noised frames where ``mask [B, F]``, the clean frames
        themselves elsewhere (the schedule's level 0 is not exactly clean; the clean prefix must be, as the
        rollout's context is)."""
        B, F_ = t.shape
        x_t = self.diffusion.add_noise(x0.flatten(0, 1), noise.flatten(0, 1), t.flatten()).view_as(x0)
        v = self.diffusion.velocity(x0.flatten(0, 1), noise.flatten(0, 1), t.flatten()).view_as(x0)
        keep = mask.view(B, F_, *([1] * (x0.dim() - 2)))
        return torch.where(keep, x_t, x0), v

    def training_step(self, batch, batch_idx):
        x0, actions = batch["frames"], batch["actions"]
        t, noise, mask = self._draw(batch, self.global_step, self.hparams.long_context_prob)
        x_in, v = self.noised_inputs(x0, noise, t, mask)
        loss = masked_v_loss(self.model(x_in, t, actions), v, mask, self._mean_loss_frames(mask))
        self.log("train/loss", loss, prog_bar=True, batch_size=x0.shape[0], sync_dist=True)
        return loss

    def _mean_loss_frames(self, mask: torch.Tensor) -> torch.Tensor | None:
        """Loss frames per process, averaged over the data-parallel processes (None in one process). The count
        differs between processes (each clip's clean prefix carries no loss); dividing by the local count would
        weigh a process's frames by how few it has once DDP averages the gradients."""
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return None
        total = trainer.strategy.reduce(mask.sum().to(torch.float32), reduce_op="sum")
        return total / trainer.world_size

    def validation_step(self, batch, batch_idx):
        from torchmetrics.functional.image import peak_signal_noise_ratio

        x0, actions = batch["frames"], batch["actions"]
        B, F_ = actions.shape
        kw = dict(batch_size=B, sync_dist=True)
        t, noise, mask = self._draw(batch, -1, self.hparams.long_context_prob)
        x_in, v = self.noised_inputs(x0, noise, t, mask)
        self.log("val/loss", masked_v_loss(self.model(x_in, t, actions), v, mask), prog_bar=True, **kw)
        ret = batch["phase"] > 0  # [B, F]: the return path, to be recalled from the clean exploration
        if not bool(ret.any()):
            return
        losses, psnrs = [], []
        for k, level in enumerate(self.eval_timesteps):
            _, noise, _ = self._draw(batch, -2 - k, 0.0)
            t = torch.where(ret, level, 0)
            x_in, v = self.noised_inputs(x0, noise, t, ret)
            v_hat = self.model(x_in, t, actions).float()
            losses.append(masked_v_loss(v_hat, v, ret))
            x0_hat = self.diffusion.x0_from_v(x_in.flatten(0, 1).float(), v_hat.flatten(0, 1), t.flatten())
            sel = ret.flatten()
            psnrs.append(peak_signal_noise_ratio(x0_hat[sel].clamp(-1, 1), x0.flatten(0, 1)[sel].float(),
                                                 data_range=2.0))
        self.log("val/loss_return", torch.stack(losses).mean(), **kw)
        self.log("val/psnr_return", torch.stack(psnrs).mean(), **kw)

    def test_step(self, batch, batch_idx):
        return self.validation_step(batch, batch_idx)

    # ------------------------------------------------------------------------------------------------ optim
    def configure_optimizers(self):
        from seqmix.parallel.plan import split_by_layout

        h = self.hparams
        ps = [p for p in self.model.parameters() if p.requires_grad]
        decay, no_decay = [p for p in ps if p.dim() >= 2], [p for p in ps if p.dim() < 2]
        groups = [{"params": part, "weight_decay": wd}
                  for sub, wd in ((decay, h.weight_decay), (no_decay, 0.0)) for part in split_by_layout(sub)]
        # model parallel: the multi-tensor path (CUDA's default) on every device, so CPU runs exercise the grouping
        kw = {"foreach": True} if self.device_mesh is not None else {}
        opt = torch.optim.AdamW(groups, lr=h.lr, betas=tuple(h.betas), **kw)
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1

        def f(step: int) -> float:
            w = min(1.0, (step + 1) / h.warmup_steps) if h.warmup_steps > 0 else 1.0
            if h.cosine:
                frac = min(1.0, max(0, step - h.warmup_steps) / max(1, total - h.warmup_steps))
                w *= 0.5 * (1 + math.cos(math.pi * frac))
            return w

        sched = torch.optim.lr_scheduler.LambdaLR(opt, f)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def check_fits(c: WorldModelConfig, spec: dict) -> None:
    """Raise a ValueError naming both sides when the model's frames or actions do not fit the data's."""
    H, W = c.grid[0] * c.patch_size, c.grid[1] * c.patch_size
    if spec["channels"] != c.channels or (spec["height"], spec["width"]) != (H, W):
        raise ValueError(f"data frames are {spec['channels']}x{spec['height']}x{spec['width']} but the model takes "
                         f"channels={c.channels}, grid {c.grid} x patch {c.patch_size} = {H}x{W}; set "
                         "model.init_args.model.channels / grid / patch_size to fit")
    if c.action_kind != "discrete" or c.num_actions != spec["num_actions"]:
        raise ValueError(f"the maze data has {spec['num_actions']} discrete actions ({', '.join(spec['action_names'])})"
                         f"; set model.init_args.model.action_kind=discrete and num_actions={spec['num_actions']} "
                         f"(got action_kind={c.action_kind!r}, num_actions={c.num_actions})")


class MazeData(_VideoData):
    """Maze trajectories (:mod:`seqmix.data.maze_data`) for :class:`WorldModelTask`.

    Args:
        path: a maze dataset directory (``seqmix prepare mazes``).
        generate: if set and ``path`` holds no dataset yet, write a procedural one of ``num_trajectories``
            trajectories with these settings there first; a dataset already at ``path`` must have been written with
            the same settings. None: ``path`` must hold a dataset.
        num_trajectories: trajectories written by ``generate``.
        clip_frames: frames per training clip (None: whole trajectories); windows at ``clip_stride``
            (default: ``clip_frames``). Validation uses whole trajectories (exploration + return).
        val_trajectories: the last ``val_trajectories`` trajectories are the validation split.
        batch_size, seed, num_workers: per-process batch size, order seed, DataLoader workers.
        verify: check shard checksums on first read.
    """

    def __init__(self, path: str, generate: MazeDataConfig | None = None, num_trajectories: int = 264,
                 clip_frames: int | None = None,
                 clip_stride: int | None = None, val_trajectories: int = 8, batch_size: int = 8, seed: int = 0,
                 num_workers: int = 0, verify: bool = True):
        super().__init__(batch_size, seed, num_workers)
        self.path, self.generate, self.verify = Path(path), generate, verify
        self.clip_frames, self.clip_stride, self.val_trajectories = clip_frames, clip_stride, val_trajectories
        if val_trajectories < 1:
            raise ValueError(f"data.init_args.val_trajectories must be >= 1, got {val_trajectories}")
        self.num_trajectories = num_trajectories
        self._gen_cfg = self._generate_config() if generate is not None else None
        if not (self.path / "index.json").is_file() and generate is None:
            raise FileNotFoundError(
                f"data.init_args.path={str(path)!r} holds no maze dataset (index.json); write one with `seqmix "
                f"prepare mazes {path}` (see `seqmix prepare mazes --help`), or set data.init_args.generate to "
                "write a procedural one on first use")
        self._index: dict | None = None

    def _generate_config(self) -> tuple[MazeDataConfig, int]:
        try:
            cfg = self.generate.validate()
        except ValueError as e:
            raise ValueError(f"data.init_args.generate: {e}") from e
        if cfg.return_frames < 1:
            raise ValueError("data.init_args.generate.return_frames must be >= 1: the return path is what is recalled")
        n = self.num_trajectories
        if n <= self.val_trajectories:
            raise ValueError(f"data.init_args.num_trajectories must be > val_trajectories={self.val_trajectories}, "
                             f"got {n}")
        return cfg, n

    def prepare_data(self) -> None:
        """Write the procedural dataset if ``generate`` is set and ``path`` holds none (rank 0 only)."""
        import json

        if self._gen_cfg is None:
            return
        cfg, n = self._gen_cfg
        index = self.path / "index.json"
        if index.is_file():
            got = json.loads(index.read_text())
            if got.get("config") != asdict(cfg) or sum(s["num_examples"] for s in got["shards"]) != n:
                raise ValueError(f"{self.path} holds a maze dataset written with other settings than "
                                 "data.init_args.generate; choose another data.init_args.path or remove it")
            return
        from seqmix.data.maze_data import write_mazes

        logger.info("writing %d procedural maze trajectories to %s", n, self.path)
        write_mazes(self.path, cfg, n, progress=False)

    def _clips(self, clip_frames, stride=None):
        from seqmix.data.maze_shards import MazeClips

        return MazeClips(self.path, clip_frames=clip_frames, stride=stride, verify=self.verify)

    def maze_spec(self) -> dict:
        import json

        if self._index is None:
            if not (self.path / "index.json").is_file():
                self.prepare_data()
            self._index = json.loads((self.path / "index.json").read_text())
        ix = self._index
        H, W, C = ix["frame_shape"]
        return {"channels": C, "height": H, "width": W, "num_actions": ix["num_actions"],
                "action_names": ix["action_names"], "frames": ix["frames"], "explore_frames": ix["explore_frames"]}

    def setup(self, stage: str | None = None) -> None:
        if self._train is not None:
            return
        whole = self._clips(None)
        n = whole.num_trajectories
        if not 0 < self.val_trajectories < n:
            raise ValueError(f"data.init_args.val_trajectories={self.val_trajectories} must lie in [1, {n - 1}] for "
                             f"the {n} trajectories in {self.path}")
        n_train = n - self.val_trajectories
        clips = self._clips(self.clip_frames, self.clip_stride)
        per = len(clips) // n  # windows per trajectory, trajectory-major
        self._train = _Indexed(clips, 0, n_train * per)
        self._val = _Indexed(whole, n_train, self.val_trajectories)
