"""Learning curves: a comparison's metric of interest measured at fixed steps during training, on a small fixed
evaluation set, so that "learns faster" and "cannot learn" are told apart.

:class:`LearningCurve` is a Lightning callback that evaluates ``metric(task, batches)`` at ``points + 1`` evenly
spaced steps (step 0 included) on the first ``num_batches`` validation batches. The metrics here are the ones the
comparisons report: MQAR query accuracy (:func:`mqar_accuracy`) and appearance recall in the returning segment of
the storyboards (:func:`video_recall`, the same fixed noise as the task's ``val/consistency``). The evaluation set is
small on purpose: with the comparisons' defaults the curve costs a few percent of a run.
"""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import Callable

import lightning as pl
import torch

from seqmix.utils.plots import pyplot, save_figure
from seqmix.utils.stats import summarize

logger = logging.getLogger(__name__)

__all__ = ["LearningCurve", "curve_at", "curve_band", "first_crossing", "mqar_accuracy", "plot_curves", "video_recall"]


class LearningCurve(pl.Callback):
    """Evaluate ``metric(task, batches) -> float`` at ``points + 1`` evenly spaced optimizer steps (0 .. the run's
    last step) on the first ``num_batches`` batches of the validation loader; the result is :attr:`curve`
    ``{"steps": [...], "values": [...]}``.

    The model is put in eval mode under ``torch.no_grad`` for each evaluation and restored; nothing is logged to
    the trainer, so validation metrics and checkpoints are those of the run without the callback.
    """

    def __init__(self, metric: Callable[[pl.LightningModule, list], float], points: int = 8, num_batches: int = 2):
        if points < 1 or num_batches < 1:
            raise ValueError(f"points and num_batches must be >= 1, got {points}, {num_batches}")
        self.metric, self.points, self.num_batches = metric, points, num_batches
        self.curve: dict[str, list] = {"steps": [], "values": []}
        self._at: list[int] = []
        self._batches: list = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        total = int(trainer.max_steps) if trainer.max_steps and trainer.max_steps > 0 else \
            int(trainer.estimated_stepping_batches)
        self._at = sorted({round(i * total / self.points) for i in range(self.points + 1)})
        loader = trainer.datamodule.val_dataloader()
        self._batches = []
        for batch in loader:
            self._batches.append(trainer.strategy.batch_to_device(batch, pl_module.device))
            if len(self._batches) == self.num_batches:
                break
        if trainer.global_step not in self.curve["steps"]:  # step 0, before any update (not again on a resume)
            self._measure(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step in self._at and trainer.global_step not in self.curve["steps"]:
            self._measure(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step not in self.curve["steps"]:  # a run stopped early: its last step is still a point
            self._measure(trainer, pl_module)

    def state_dict(self) -> dict:
        # saved in the run's checkpoints: a resumed run keeps the points measured before the interruption
        return {"curve": {k: list(v) for k, v in self.curve.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.curve = {k: list(v) for k, v in state["curve"].items()}

    def _measure(self, trainer, pl_module) -> None:
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            value = float(self.metric(pl_module, self._batches))
        pl_module.train(was_training)
        self.curve["steps"].append(int(trainer.global_step))
        self.curve["values"].append(value)


def mqar_accuracy(task, batches: list) -> float:
    """Query accuracy of an :class:`~seqmix.tasks.LMTask` over ``(inputs, labels)`` batches (scored positions only)."""
    from seqmix.data.mqar import IGNORE_INDEX

    hit = n = 0
    for inputs, labels in batches:
        scored = labels != IGNORE_INDEX
        pred = task.lm.scored_logits(inputs, scored).argmax(-1)  # [N]
        hit += int((pred == labels[scored]).sum())
        n += int(scored.sum())
    return hit / max(1, n)


def video_recall(task, batches: list) -> float:
    """Appearance recall in the returning segments of a :class:`~seqmix.tasks.VideoDiffusionTask` on storyboard
    batches: ``x0`` predicted at the task's consistency timesteps with the same fixed noise as its validation."""
    from seqmix.data.storyboard import consistency

    if task._storyboard is None:
        raise ValueError("video_recall needs storyboard data (appearance recall is defined on storyboards only)")
    n_eval = len(task.eval_timesteps)  # validation draws eval timesteps first, then consistency ones
    scores = []
    for batch in batches:
        x0, text = batch["latents"], batch["text"]
        for j, t_val in enumerate(task.consistency_timesteps):
            _, noise, _ = task._draw(batch, -1 - (n_eval + j), train=False)
            t = torch.full((x0.shape[0],), t_val, device=x0.device, dtype=torch.long)
            x_t = task.diffusion.add_noise(x0, noise, t)
            x0_hat = task.diffusion.x0_from_v(x_t.float(), task.denoise(x_t, t, text).float(), t)
            scores.append(consistency(x0_hat, batch["mask"], batch["appearance"], task._storyboard))
    return float(torch.cat(scores).mean())


def curve_band(curves: list[dict]) -> dict:
    """Mean and interval per step over seeds' curves (:func:`seqmix.utils.stats.summarize`); steps common to all."""
    if not curves:
        return {"steps": [], "mean": [], "low": [], "high": []}
    steps = sorted(set.intersection(*(set(c["steps"]) for c in curves)))
    out = {"steps": steps, "mean": [], "low": [], "high": []}
    for s in steps:
        summ = summarize([c["values"][c["steps"].index(s)] for c in curves])
        out["mean"].append(summ.mean)
        out["low"].append(summ.low)
        out["high"].append(summ.high)
    return out


def curve_at(curves: list[dict], step: int):
    """The seeds' curve values at ``step`` summarised (:func:`seqmix.utils.stats.summarize`), or None where a curve
    has no point there (e.g. a run shorter than ``step``)."""
    if not curves or any(step not in c.get("steps", []) for c in curves):
        return None
    return summarize([c["values"][c["steps"].index(step)] for c in curves])


def first_crossing(curves: list[dict], level: float) -> int | None:
    """The first curve step at which the seed-mean value reaches ``level`` (None: never within the curves)."""
    band = curve_band(curves)
    return next((s for s, m in zip(band["steps"], band["mean"]) if m >= level), None)


def tail_change(curves: list[dict], fraction: float = 0.25) -> float | None:
    """How much the seed-mean curve still moves over the last ``fraction`` of its steps: the least-squares line's
    rise across that window (value units; about 0: flat). Robust to the single-point noise of short evaluations,
    which a max - min would report as movement. None with fewer than 2 points in the window."""
    band = curve_band(curves)
    if not band["steps"]:
        return None
    end = band["steps"][-1]
    pts = [(s, m) for s, m in zip(band["steps"], band["mean"]) if s >= end * (1 - fraction)]
    if len(pts) < 2:
        return None
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return slope * (xs[-1] - xs[0])


def plot_curves(groups: dict[str, list[dict]], path: Path, ylabel: str, title: str,
                chance: float | None = None, mark_step: int | None = None) -> Path | None:
    """Learning curves, ``groups`` = ``{name: [curve per seed]}``; ``mark_step``: a dotted vertical line there (e.g.
    the equal budget of a longer run).

    Up to 4 names share one axes (seed mean per name, the seeds' range shaded); more get one small panel each
    (every seed thin, the mean thick, the same axes), where overlapping bands would hide each other."""
    plt = pyplot(path)
    if plt is None:
        return None
    groups = {n: [c for c in cs if c and c.get("steps")] for n, cs in groups.items()}
    groups = {n: cs for n, cs in groups.items() if cs}
    if not groups:
        return None
    panels = len(groups) > 4
    cols = min(3, len(groups)) if panels else 1
    rows = -(-len(groups) // cols) if panels else 1
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows + 0.6) if panels else (6.5, 4.2),
                             sharex=True, sharey=True, squeeze=False)
    flat = list(axes.flat)
    for i, (name, curves) in enumerate(groups.items()):
        ax = flat[i] if panels else flat[0]
        band = curve_band(curves)
        color = f"C{i % 10}"
        if panels:
            for c in curves:
                ax.plot(c["steps"], c["values"], color=color, lw=0.8, alpha=0.45)
            ax.plot(band["steps"], band["mean"], color=color, lw=2.2, label=f"mean of {len(curves)}")
            ax.set_title(name, fontsize=9)
        else:
            ax.plot(band["steps"], band["mean"], marker=".", color=color, label=name)
            if len(curves) > 1:
                lo = [min(c["values"][c["steps"].index(s)] for c in curves) for s in band["steps"]]
                hi = [max(c["values"][c["steps"].index(s)] for c in curves) for s in band["steps"]]
                ax.fill_between(band["steps"], lo, hi, color=color, alpha=0.2)
    for j, ax in enumerate(flat):
        if panels and j >= len(groups):
            ax.set_visible(False)
            continue
        if chance is not None:
            ax.axhline(chance, color="k", ls="--", lw=1, label="chance")
        if mark_step:
            ax.axvline(mark_step, color="k", ls=":", lw=1, label=f"step {mark_step}")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, alpha=0.3)
    for ax in (axes[-1] if panels else flat):
        ax.set_xlabel("optimizer step")
    for ax in (axes[:, 0] if panels else flat):
        ax.set_ylabel(ylabel, fontsize=8 if panels else None)
    flat[0].legend(fontsize=7)
    if panels:
        fig.suptitle(f"{title} (thin: each seed; thick: their mean)", fontsize=10)
    else:
        full = f"{title} (band: the seeds' range)" if any(len(c) > 1 for c in groups.values()) else title
        flat[0].set_title(textwrap.fill(full, 70), fontsize=10)  # long titles wrap instead of running off the figure
    return save_figure(fig, path)
