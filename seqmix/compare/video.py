"""The text-to-video comparison: every global layer in the segmented DiT on the procedural storyboards, the same
data, steps and evaluation for all."""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from seqmix.compare.common import _check_layers, _default_jobs, _fit_recipe, _map_runs, base_recipe, layer_args, \
    token_mixers

logger = logging.getLogger(__name__)

__all__ = ["VideoComparison", "run_video_comparison"]


@dataclass(kw_only=True)
class VideoComparison:
    """Text-to-video baselines on the procedural storyboards: the same data, steps and evaluation for all.

    Attributes:
        layers: global layers, registry names or ``"none"`` (local attention only); default: ``"none"`` and every
            registry layer that mixes tokens. Each run is :func:`layer_args` of ``"t2v"``.
        max_steps: optimizer steps per recipe.
        num_train: training videos (the step budget decides how many are seen).
        samples: videos sampled (DDIM + guidance) per recipe and written as GIFs (0 = none).
        sample_steps: DDIM steps for those samples.
        jobs: recipes trained at once in separate processes (0 = one per CPU core without a GPU, else 1).
        out: output directory.
    """

    layers: list[str] = field(default_factory=lambda: ["none", *token_mixers()])
    max_steps: int = 500
    num_train: int = 4096
    samples: int = 1
    sample_steps: int = 20
    jobs: int = 0
    out: str = "runs/compare-video"

    def num_jobs(self) -> int:
        return self.jobs or _default_jobs()

    def quick(self) -> "VideoComparison":
        return dataclasses.replace(self, layers=self.layers[:2], max_steps=2, num_train=16, samples=1, sample_steps=2,
                                   jobs=1)

    def validate(self) -> None:
        _check_layers(self.layers, allow_none=True)
        if not base_recipe("t2v").is_file():
            raise FileNotFoundError(f"base recipe {base_recipe('t2v')} does not exist")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.jobs < 0:
            raise ValueError(f"jobs must be >= 0 (0 = auto), got {self.jobs}")


def _video_markdown(rows: list[dict], cmp: VideoComparison, command: str) -> str:
    S = max((len([k for k in r["metrics"] if k.startswith("val/loss_seg")]) for r in rows), default=0)
    seg_cols = " | ".join(f"loss seg {i + 1}" for i in range(S))
    lines = [
        "# Text-to-video comparison (procedural storyboards, CPU scale)", "",
        f"Command: `{command}`  ",
        f"Every recipe: {cmp.max_steps} steps on the same storyboards (3 s segments; the character's appearance is "
        "named only in segment 1, absent in segment 2, back in segment 3), evaluated on the same held-out videos at "
        f"fixed noise. consistency = appearance recall in returning segments (chance {_chance(rows)}). "
        f"train s = wall seconds of one run ({rows[0].get('threads', '?') if rows else '?'} CPU thread(s) each).", "",
        f"| run | global layer | params | state | train s | val loss | {seg_cols} | consistency | PSNR | SSIM |",
        "|---|---|---:|---:|---:|---:|" + "---:|" * S + "---:|---:|---:|",
    ]
    for r in rows:
        m = r["metrics"]
        segs = " | ".join(f"{m.get(f'val/loss_seg{i}', float('nan')):.4f}" for i in range(S))
        lines.append(
            f"| {r['name']} | {r['mixer'] or 'none (local attention)'} | {r['params']:,} | {r['state_size']:,} | "
            f"{r['train_seconds']:.0f} | {m['val/loss']:.4f} | {segs} | {m.get('val/consistency', float('nan')):.3f} | "
            f"{m['val/psnr']:.2f} | {m['val/ssim']:.3f} |")
    return "\n".join(lines)


def _chance(rows: list[dict]) -> str:
    k = {r.get("num_appearances") for r in rows} - {None}
    return f"1/{k.pop()}" if len(k) == 1 else "1/#appearances"


def _video_plot(rows: list[dict], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: skipping %s", path)
        return None
    names = [r["name"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    cons = [r["metrics"].get("val/consistency", float("nan")) for r in rows]
    axes[0].bar(names, cons, color=["tab:gray" if r["mixer"] is None else "tab:blue" for r in rows])
    k = rows[0].get("num_appearances") or 8
    axes[0].axhline(1 / k, color="k", ls="--", lw=1, label="chance")
    axes[0].set_ylabel("appearance recall in returning segments")
    axes[0].set_ylim(0, 1)
    axes[0].legend()
    S = max(len([k for k in r["metrics"] if k.startswith("val/loss_seg")]) for r in rows)
    for r in rows:
        axes[1].plot(range(1, S + 1), [r["metrics"][f"val/loss_seg{i}"] for i in range(S)], marker="o", label=r["name"])
    axes[1].set_xticks(range(1, S + 1))
    axes[1].set_xlabel("segment position")
    axes[1].set_ylabel("denoising loss (fixed noise)")
    axes[1].legend(fontsize=7)
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=30)
        ax.grid(True, alpha=0.3)
    fig.suptitle("Global layers vs local attention on procedural storyboards")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_video_comparison(cmp: VideoComparison, progress: bool = True) -> dict:
    """Train and evaluate every global layer with identical budgets; write results.{json,md,png} and sample GIFs."""
    cmp.validate()
    command = " ".join(shlex.quote(a) for a in sys.argv)
    out = Path(cmp.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []

    def done(row: dict) -> None:
        rows.append(row)
        logger.info("%s: val loss %.4f, consistency %.3f", row["name"], row["metrics"]["val/loss"],
                    row["metrics"].get("val/consistency", float("nan")))

    runs = [(layer, cmp) for layer in cmp.layers]
    _map_runs(_video_run, runs, cmp.num_jobs(), lambda r: r[0], "t2v", progress, done)
    order = {n: i for i, n in enumerate(cmp.layers)}
    rows.sort(key=lambda r: order[r["name"]])
    md = _video_markdown(rows, cmp, command)
    doc = {"schema": "seqmix.compare.video/v1", "command": command, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "comparison": dataclasses.asdict(cmp), "rows": rows}
    (out / "results.json").write_text(json.dumps(doc, indent=1, default=str))
    (out / "results.md").write_text(md + "\n")
    png = _video_plot(rows, out / "results.png")
    return {"markdown": md, "rows": rows, "paths": {"json": out / "results.json", "md": out / "results.md", "png": png}}


def _video_run(name: str, cmp: VideoComparison) -> dict:
    """Train one global layer (``"none"``: local attention only) with the comparison's budget, evaluate it, sample
    it; returns its table row."""
    import torch

    run_args = layer_args("t2v", None if name == "none" else name)
    cli, train_s, metrics = _fit_recipe(
        run_args, [f"--data.init_args.num_train={cmp.num_train}", "--trainer.val_check_interval=null",
                 "--trainer.check_val_every_n_epoch=1000000"], cmp.max_steps)
    task = cli.model
    row = {"name": name, "args": run_args, "mixer": task.dit.config.mixer, "steps": int(cli.trainer.global_step),
           "train_seconds": train_s, "threads": torch.get_num_threads(), "metrics": metrics,
           "params": sum(p.numel() for p in task.parameters()),
           "state_size": task.dit.state_size(seq_len=task.layout.total_tokens),
           "num_appearances": getattr(getattr(cli.datamodule, "cfg", None), "num_appearances", None)}
    if cmp.samples:
        row["samples"] = _sample(cli, cmp, Path(cmp.out) / "samples" / name)
    return row


def _sample(cli, cmp: VideoComparison, out: Path) -> list[str]:
    """DDIM + guidance samples for the first validation videos' texts, written as GIFs."""
    import torch

    task, dm = cli.model, cli.datamodule
    task.hparams.sample_steps = cmp.sample_steps
    task.hparams.sample_dir = str(out)
    batch = next(iter(dm.val_dataloader()))
    batch = {k: (v[: cmp.samples] if hasattr(v, "__getitem__") and not isinstance(v, str) else v) for k, v in batch.items()}
    task.eval()
    with torch.no_grad():
        task.predict_step(batch, 0)
    return sorted(str(p) for p in out.glob("*.gif"))
