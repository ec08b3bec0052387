"""Text-to-video fine-tuning, evaluation and sampling of a :class:`~seqmix.backbones.SegmentedDiT`, as the TTT
video paper trains every baseline (arXiv 2504.05298, Appendix): v-prediction with zero terminal SNR, AdamW
(0.9, 0.95), weight decay 1e-4, gradient clipping 0.1 (trainer), staged trainable subsets with separate learning
rates for pretrained weights, attention Q/K/V/O and the new global layers (cosine for the latter), DDIM sampling
with classifier-free guidance ramped over the steps.

Batches are dicts: ``latents [B, F, C, H, W]``, ``text [B, S L, D_text]``, ``index [B]`` (example ids; all
randomness of a training step is drawn per example from ``(seed, step, index)``, so 1-process and N-process runs
and resumed runs see the same noise), and for storyboards ``mask [B, F, H, W]``, ``appearance [B]``.

Validation (``val/...``): denoising loss at fixed timesteps and fixed noise, overall and per segment position
(``val/loss_seg{i}``); PSNR / SSIM of the one-step clean prediction (``val/psnr``, ``val/ssim``); on storyboards
the appearance recall of returning segments (``val/consistency``, chance = 1 / #appearances).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Literal

import lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from seqmix.backbones.dit import DiTConfig, SegmentedDiT
from seqmix.backbones.layout import VideoLayout
from seqmix.data.shards import LatentShards
from seqmix.data.storyboard import StoryboardConfig, StoryboardDataset, consistency, write_gif
from seqmix.diffusion import ScheduleConfig, VDiffusion
from seqmix.parallel.lightning import MixedLayoutClipping
from seqmix.training import (ResumableLoader, data_parallel_rank, example_generator, load_checkpoint,
                             trainer_progress)

logger = logging.getLogger(__name__)

__all__ = ["VideoDiffusionTask", "StoryboardVideoData", "LatentVideoData"]

Trainable = Literal["all", "attention+global", "global"]


class VideoDiffusionTask(MixedLayoutClipping, pl.LightningModule):
    """Fine-tune / evaluate / sample a segmented DiT with a pluggable global layer.

    Args:
        model: DiT architecture and global layer (``model.mixer``: a registry name, or null = local attention).
        pretrained: a diffusers-format CogVideoX transformer directory to start from (local; never downloaded).
            Its config.json sets the architecture; ``model``'s mixer fields are kept.
        init_from: a Lightning checkpoint of a previous stage to take weights from (optimizer state is not taken).
        schedule: diffusion noise schedule.
        trainable: ``all`` (3 s stage), ``attention+global`` (later stages: global layers + attention Q/K/V/O),
            or ``global`` (global layers only).
        lr: learning rate of pretrained weights. lr_attention: of attention Q/K/V/O (default: ``lr``).
        lr_global: of the global layers (paper: 1e-4 at 3 s, 1e-5 later), cosine-decayed if ``global_cosine``.
        warmup_steps: linear warm-up of every group.
        betas, weight_decay: AdamW settings (paper: (0.9, 0.95), 1e-4).
        text_dropout: probability of dropping a video's text during training (enables guidance).
        eval_timesteps: timesteps of the fixed-noise validation (losses, PSNR, SSIM).
        consistency_timesteps: timesteps where appearance recall is scored: high noise, where the noisy frames of a
            returning segment carry (almost) no colour, so only context (segment 1's text and frames) can tell it.
        sample_steps, guidance: DDIM steps and (first, last) guidance scales for ``predict``.
        sample_dir: where ``predict`` writes GIFs (None: no files).
        seed: seed of the per-example training / evaluation randomness.
        fsdp_precision: under a model-parallel strategy, ``"full"`` (FSDP2 gathers and computes in the parameters'
            dtype) or ``"bf16"`` (bf16 gather and compute, fp32 gradient reduction, fp32 master weights and
            optimizer state; :func:`seqmix.parallel.plan.parallelize`).
        sequence_parallel: under a model-parallel strategy, shard the residual stream over the tensor-parallel ranks
            by tokens, between blocks and inside them (norms, gates, residual adds, the per-token tails of TTT and
            Mamba2): what per-block checkpointing keeps divides by the tensor-parallel size, and most of what a
            recomputed block saves outside the head-split layers (the paper recipe's setting).
    """

    def __init__(
        self,
        model: DiTConfig,
        *,
        pretrained: str | None = None,
        init_from: str | None = None,
        schedule: ScheduleConfig | None = None,
        trainable: Trainable = "all",
        lr: float = 1e-5,
        lr_attention: float | None = None,
        lr_global: float = 1e-4,
        global_cosine: bool = True,
        warmup_steps: int = 0,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 1e-4,
        text_dropout: float = 0.1,
        eval_timesteps: list[int] | None = None,
        consistency_timesteps: list[int] | None = None,
        sample_steps: int = 50,
        guidance: tuple[float, float] = (1.0, 4.0),
        sample_dir: str | None = None,
        seed: int = 0,
        fsdp_precision: Literal["full", "bf16"] = "full",
        sequence_parallel: bool = False,
    ):
        super().__init__()
        if trainable not in ("all", "attention+global", "global"):
            raise ValueError(f"model.init_args.trainable={trainable!r}; valid: all, attention+global, global")
        if trainable == "global" and model.mixer is None:
            raise ValueError("model.init_args.trainable='global' but model.mixer is null: nothing would train")
        if not 0 <= text_dropout < 1:
            raise ValueError(f"model.init_args.text_dropout must lie in [0, 1), got {text_dropout}")
        self.save_hyperparameters()
        self.diffusion = VDiffusion(schedule)
        self.eval_timesteps = eval_timesteps or [300, 600, 900]
        self.consistency_timesteps = consistency_timesteps or [950, 990]
        bad = [t for t in (*self.eval_timesteps, *self.consistency_timesteps)
               if not 0 <= t < self.diffusion.num_timesteps]
        if bad:
            raise ValueError(f"model.init_args.eval_timesteps {bad} outside [0, {self.diffusion.num_timesteps})")
        try:
            if pretrained:
                if not Path(pretrained).is_dir():
                    raise FileNotFoundError(f"model.init_args.pretrained={pretrained!r} is not a directory")
                self.dit = SegmentedDiT.from_cogvideox(
                    pretrained, mixer=model.mixer, mixer_config=model.mixer_config, mixer_num_heads=model.mixer_num_heads,
                    gate_init=model.gate_init, gradient_checkpointing=model.gradient_checkpointing)
            else:
                self.dit = SegmentedDiT(model)
        except ValueError as e:
            raise ValueError(f"model.init_args.model: {e}") from e
        if init_from:
            self._init_from(init_from)
        self.layout: VideoLayout | None = None
        self._storyboard: StoryboardConfig | None = None
        self.dit.set_trainable(trainable)

    # ------------------------------------------------------------------------------------------------ setup
    def _init_from(self, path: str) -> None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"model.init_args.init_from={path!r} does not exist")
        sd = load_checkpoint(path)["state_dict"]  # verified against its digest
        missing, unexpected = self.load_state_dict(sd, strict=False)
        if unexpected:
            raise ValueError(f"init_from {path}: unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        if missing:
            logger.info("init_from %s: %d parameters initialised fresh (e.g. %s)", path, len(missing), missing[0])

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is None or not hasattr(dm, "video_spec"):
            raise ValueError("VideoDiffusionTask needs a video data module (StoryboardVideoData or LatentVideoData)")
        spec = dm.video_spec()
        c = self.dit.config
        if spec["channels"] != c.in_channels:
            raise ValueError(f"data latents have {spec['channels']} channels but model.in_channels={c.in_channels}")
        if spec["text_dim"] != c.text_embed_dim:
            raise ValueError(f"data text width {spec['text_dim']} != model.text_embed_dim={c.text_embed_dim}")
        try:
            self.layout = VideoLayout.from_num_frames(
                spec["frames"], text_len=spec["text_len"], latent_height=spec["height"], latent_width=spec["width"],
                patch_size=c.patch_size)
        except ValueError as e:
            raise ValueError(f"data: {spec['frames']} latent frames do not fit the segment layout: {e}") from e
        self._storyboard = spec.get("storyboard")
        logger.info("video layout: %s", self.layout.describe())

    def configure_model(self) -> None:
        """Under a model-parallel strategy (:class:`seqmix.parallel.lightning.ModelParallel`) shard the DiT with
        the strategy's mesh: FSDP2 x tensor parallel by heads, activation checkpointing per block as configured."""
        if self.device_mesh is None:
            return
        from seqmix.parallel.plan import parallelize

        parallelize(self.dit, self.device_mesh, activation_checkpointing=self.dit.config.gradient_checkpointing,
                    fsdp_precision=self.hparams.fsdp_precision, sequence_parallel=self.hparams.sequence_parallel)

    # ------------------------------------------------------------------------------------------------ steps
    def _draw(self, batch: dict, step: int, train: bool):
        """Per-example timesteps, noise and text-drop decisions from (seed, step, index)."""
        idx = batch["index"].tolist()
        x0 = batch["latents"]
        ts, noise, keep = [], [], []
        for j, i in enumerate(idx):
            g = example_generator(self.hparams.seed, step, int(i))
            ts.append(torch.randint(0, self.diffusion.num_timesteps, (1,), generator=g))
            noise.append(torch.randn(x0.shape[1:], generator=g))
            keep.append(torch.rand(1, generator=g) >= (self.hparams.text_dropout if train else 0.0))
        t = torch.cat(ts).to(x0.device)
        return t, torch.stack(noise).to(x0), torch.cat(keep).to(x0.device)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.dit(x_t, t, text, self.layout)

    def training_step(self, batch, batch_idx):
        x0, text = batch["latents"], batch["text"]
        t, noise, keep = self._draw(batch, self.global_step, train=True)
        text = text * keep.view(-1, 1, 1).to(text.dtype)  # dropped text = zeros (the unconditional input)
        x_t = self.diffusion.add_noise(x0, noise, t)
        v = self.diffusion.velocity(x0, noise, t)
        loss = F.mse_loss(self.denoise(x_t, t, text).float(), v.float())
        self.log("train/loss", loss, prog_bar=True, batch_size=x0.shape[0], sync_dist=True)
        return loss

    def _segment_frames(self) -> list[tuple[int, int]]:
        return [self.layout.owned_frames(i) for i in range(self.layout.num_segments)]

    def validation_step(self, batch, batch_idx):
        from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

        x0, text = batch["latents"], batch["text"]
        B = x0.shape[0]
        lo, hi = x0.amin().item(), x0.amax().item()
        losses, segs, psnr, ssim, cons = [], [], [], [], []
        score_cons = self._storyboard is not None and "mask" in batch and self.layout.num_segments >= 3
        timesteps = [(t, "eval") for t in self.eval_timesteps]
        if score_cons:
            timesteps += [(t, "consistency") for t in self.consistency_timesteps]
        for k, (t_val, kind) in enumerate(timesteps):
            # Fixed noise per (example, eval timestep): every model is scored on the same inputs.
            _, noise, _ = self._draw(batch, -1 - k, train=False)
            t = torch.full((B,), t_val, device=x0.device, dtype=torch.long)
            x_t = self.diffusion.add_noise(x0, noise, t)
            v_hat = self.denoise(x_t, t, text).float()
            x0_hat = self.diffusion.x0_from_v(x_t.float(), v_hat, t)
            if kind == "consistency":
                cons.append(consistency(x0_hat, batch["mask"], batch["appearance"], self._storyboard).mean())
                continue
            err = (v_hat - self.diffusion.velocity(x0, noise, t).float()).pow(2)  # [B, F, C, H, W]
            losses.append(err.mean())
            segs.append(torch.stack([err[:, a:b].mean() for a, b in self._segment_frames()]))
            frames_hat, frames = x0_hat.flatten(0, 1), x0.float().flatten(0, 1)
            psnr.append(peak_signal_noise_ratio(frames_hat, frames, data_range=(lo, hi)))
            ks = min(7, frames.shape[-1] - (1 - frames.shape[-1] % 2), frames.shape[-2] - (1 - frames.shape[-2] % 2))
            ssim.append(structural_similarity_index_measure(frames_hat, frames, data_range=(lo, hi),
                                                            kernel_size=max(3, ks)))
        kw = dict(batch_size=B, sync_dist=True)
        self.log("val/loss", torch.stack(losses).mean(), prog_bar=True, **kw)
        for i, s in enumerate(torch.stack(segs).mean(0)):
            self.log(f"val/loss_seg{i}", s, **kw)
        self.log("val/psnr", torch.stack(psnr).mean(), **kw)
        self.log("val/ssim", torch.stack(ssim).mean(), **kw)
        if cons:
            self.log("val/consistency", torch.stack(cons).mean(), prog_bar=True, **kw)

    def test_step(self, batch, batch_idx):
        return self.validation_step(batch, batch_idx)

    def predict_step(self, batch, batch_idx, dataloader_idx: int = 0):
        """Sample videos for the batch's texts with DDIM + guidance; write GIFs to ``sample_dir`` if set."""
        x0, text = batch["latents"], batch["text"]
        g = example_generator(self.hparams.seed, -10_000, int(batch["index"][0]))
        noise = torch.randn(x0.shape, generator=g).to(x0)

        def denoise(x, t, cond):
            return self.denoise(x, t, text if cond else torch.zeros_like(text)).float()

        video = self.diffusion.sample(denoise, tuple(x0.shape), num_steps=self.hparams.sample_steps,
                                      guidance=tuple(self.hparams.guidance), noise=noise, device=x0.device,
                                      progress=True)
        if self.hparams.sample_dir:
            out = Path(self.hparams.sample_dir)
            out.mkdir(parents=True, exist_ok=True)
            for v, i in zip(video, batch["index"].tolist()):
                write_gif(v.cpu(), str(out / f"sample-{i:05d}.gif"))
        return video

    # ------------------------------------------------------------------------------------------------ optim
    def configure_optimizers(self):
        from seqmix.parallel.plan import split_by_layout

        h = self.hparams
        named = self.dit.param_groups()
        lrs = {"pretrained": h.lr, "attention_qkvo": h.lr_attention if h.lr_attention is not None else h.lr,
               "global_layer": h.lr_global}
        groups = []
        for g, params in named.items():
            ps = [p for p in params.values() if p.requires_grad]
            if not ps:
                continue
            decay = [p for p in ps if p.dim() >= 2]
            no_decay = [p for p in ps if p.dim() < 2]
            for sub, wd in ((decay, h.weight_decay), (no_decay, 0.0)):
                for part in split_by_layout(sub):
                    groups.append({"params": part, "lr": lrs[g], "weight_decay": wd, "name": g})
        # model parallel: the multi-tensor path (CUDA's default) on every device, so CPU runs exercise the grouping
        kw = {"foreach": True} if self.device_mesh is not None else {}
        opt = torch.optim.AdamW(groups, betas=tuple(h.betas), **kw)
        total = max(1, int(self.trainer.estimated_stepping_batches))

        def make(name: str):
            def f(step: int) -> float:
                w = min(1.0, (step + 1) / h.warmup_steps) if h.warmup_steps > 0 else 1.0
                if name == "global_layer" and h.global_cosine:
                    w *= 0.5 * (1 + math.cos(math.pi * min(1.0, step / total)))
                return w
            return f

        sched = torch.optim.lr_scheduler.LambdaLR(opt, [make(g["name"]) for g in groups])
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class _Indexed(Dataset):
    """Adds the example index to every item (the key of the per-example randomness)."""

    def __init__(self, base: Dataset, offset: int = 0, length: int | None = None):
        self.base, self.offset = base, offset
        self.length = len(base) - offset if length is None else length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        item = dict(self.base[self.offset + i])
        item["index"] = self.offset + i
        item.pop("present", None)
        return item


class _VideoData(pl.LightningDataModule):
    def __init__(self, batch_size: int, seed: int, num_workers: int):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.init_args.batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self._train: Dataset | None = None
        self._val: Dataset | None = None

    def _progress(self) -> tuple[int, int]:
        return trainer_progress(self.trainer)

    def _rank(self) -> tuple[int, int]:
        return data_parallel_rank(self.trainer)

    def train_dataloader(self):
        return ResumableLoader(self._train, self.batch_size, seed=self.seed, shuffle=True, progress_fn=self._progress,
                               rank_fn=self._rank, num_workers=self.num_workers)

    def val_dataloader(self):
        return ResumableLoader(self._val, self.batch_size, seed=self.seed, shuffle=False, drop_last=False,
                               progress_fn=lambda: (0, 0), rank_fn=self._rank, num_workers=self.num_workers)

    def test_dataloader(self):
        return self.val_dataloader()

    def predict_dataloader(self):
        return self.val_dataloader()


class StoryboardVideoData(_VideoData):
    """Procedural storyboards (see :mod:`seqmix.data.storyboard`): offline data where late segments must stay
    consistent with the first one.

    Args:
        num_segments: 3 s segments per video (1 / 3 / 6 / 10 / 21 for 3 / 9 / 18 / 30 / 63 s).
        channels, height, width: latent channels and grid.
        text_tokens, text_dim: text slot length per segment and embedding width.
        num_appearances: character palette size.
        char_size: side of the square character in latent pixels.
        background: std of the random per-video background colour (0: plain scenes).
        num_train, num_val: videos per split (validation uses disjoint seeds).
        batch_size: per-process batch size.
        seed: data seed (also the order seed).
        num_workers: DataLoader workers.
    """

    def __init__(self, num_segments: int = 3, channels: int = 4, height: int = 8, width: int = 8,
                 text_tokens: int = 4, text_dim: int = 32, num_appearances: int = 4, char_size: int = 6, background: float = 0.0,
                 num_train: int = 512, num_val: int = 64, batch_size: int = 8, seed: int = 0, num_workers: int = 0):
        super().__init__(batch_size, seed, num_workers)
        self.cfg = StoryboardConfig(num_segments=num_segments, channels=channels, height=height, width=width,
                                    text_tokens=text_tokens, text_dim=text_dim, num_appearances=num_appearances,
                                    char_size=char_size, background=background)
        try:
            self.cfg.validate()
        except ValueError as e:
            raise ValueError(f"data.init_args: {e}") from e
        if num_train < 1 or num_val < 1:
            raise ValueError(f"data.init_args.num_train / num_val must be >= 1, got {num_train}, {num_val}")
        self.num_train, self.num_val = num_train, num_val

    def video_spec(self) -> dict:
        c = self.cfg
        return {"frames": c.num_frames, "channels": c.channels, "height": c.height, "width": c.width,
                "text_len": c.text_tokens, "text_dim": c.text_dim, "storyboard": c}

    def setup(self, stage: str | None = None) -> None:
        if self._train is None:
            # Validation videos come from a disjoint seed range.
            self._train = _Indexed(StoryboardDataset(self.cfg, self.num_train, seed=self.seed))
            self._val = _Indexed(StoryboardDataset(self.cfg, self.num_val, seed=self.seed + 7_777_777))


class LatentVideoData(_VideoData):
    """Precomputed latents + text embeddings in the shard format of :mod:`seqmix.data.shards`.

    Args:
        path: dataset directory (with index.json).
        val_examples: the last ``val_examples`` videos form the validation split.
        batch_size, seed, num_workers: as for :class:`StoryboardVideoData`.
        verify: check shard checksums on first use.
    """

    def __init__(self, path: str, val_examples: int = 16, batch_size: int = 1, seed: int = 0, num_workers: int = 0,
                 verify: bool = True):
        super().__init__(batch_size, seed, num_workers)
        if not Path(path).is_dir():
            raise FileNotFoundError(f"data.init_args.path={path!r} does not exist")
        self.shards = LatentShards(path, verify=verify)
        if not 0 < val_examples < len(self.shards):
            raise ValueError(f"data.init_args.val_examples={val_examples} must lie in [1, {len(self.shards) - 1}]")
        self.val_examples = val_examples
        text_len = self.shards.index.get("layout", {}).get("text_tokens")
        S = (self.shards.latent_shape[0] - 1) // 12
        self._text_len = text_len or self.shards.text_shape[0] // max(S, 1)

    def video_spec(self) -> dict:
        F_, C, H, W = self.shards.latent_shape
        return {"frames": F_, "channels": C, "height": H, "width": W, "text_len": self._text_len,
                "text_dim": self.shards.text_shape[1]}

    def setup(self, stage: str | None = None) -> None:
        if self._train is None:
            n = len(self.shards)
            self._train = _Indexed(self.shards, 0, n - self.val_examples)
            self._val = _Indexed(self.shards, n - self.val_examples, self.val_examples)
