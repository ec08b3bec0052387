"""Equal-budget comparisons of registry layers: the MQAR sweep (accuracy against state size).

Every recipe is trained through the same LightningCLI path as ``seqmix fit --config RECIPE``, with only the
swept fields overridden (model width, learning rate, step budget), so a comparison is a set of recipe runs that
anyone can re-run one by one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

__all__ = ["MQARSweep", "run_mqar_sweep", "recipe_dir"]


def recipe_dir() -> Path:
    """``recipes/`` of the working directory if present, else the one next to the seqmix package."""
    here = Path("recipes")
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[1] / "recipes"


@dataclass(kw_only=True)
class MQARSweep:
    """An MQAR sweep: every recipe x width x learning rate, the same data and step budget for all."""

    recipes: list[str] = field(default_factory=lambda: sorted(str(p) for p in (recipe_dir() / "mqar").glob("*.yaml")))
    widths: list[int] = field(default_factory=lambda: [32, 64])
    lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-3])
    max_steps: int | None = None
    out: str = "runs/compare-mqar"

    def quick(self) -> "MQARSweep":
        """A smoke-sized copy: first two recipes, one width, one lr, 3 steps."""
        return dataclasses.replace(self, recipes=self.recipes[:2], widths=self.widths[:1], lrs=self.lrs[:1],
                                   max_steps=3)

    def validate(self) -> None:
        if not self.recipes:
            raise ValueError(f"no MQAR recipes given or found under {recipe_dir() / 'mqar'}")
        for r in self.recipes:
            if not Path(r).is_file():
                raise FileNotFoundError(f"recipe {r!r} does not exist")
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"widths must be positive ints, got {self.widths}")
        if not self.lrs or min(self.lrs) <= 0:
            raise ValueError(f"lrs must be positive, got {self.lrs}")


def _run_one(recipe: str, width: int, lr: float, max_steps: int | None) -> dict:
    from seqmix.cli import run_lightning

    args = [
        "--config", recipe,
        f"--model.init_args.model.dim={width}",
        f"--model.init_args.lr={lr}",
        "--trainer.logger=false", "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
    ]
    if max_steps:
        args.append(f"--trainer.max_steps={max_steps}")
    cli = run_lightning(args, run=False)
    model, dm, trainer = cli.model, cli.datamodule, cli.trainer
    t0 = time.perf_counter()
    trainer.fit(model, dm)
    train_s = time.perf_counter() - t0
    (metrics,) = trainer.validate(model, dm, verbose=False)
    lm = model.lm
    return {
        "recipe": recipe, "mixer": "+".join(sorted(set(lm.mixer_names))), "width": width, "lr": lr,
        "steps": int(trainer.global_step), "train_seconds": train_s,
        "val_acc": float(metrics["val/acc"]), "val_loss": float(metrics["val/loss"]),
        "state_size": lm.state_size(seq_len=dm.cfg.seq_len), "params": sum(p.numel() for p in lm.parameters()),
        "task": dataclasses.asdict(dm.cfg),
    }


def _best(records: list[dict]) -> list[dict]:
    best: dict[tuple, dict] = {}
    for r in records:
        key = (r["recipe"], r["width"])
        if key not in best or r["val_acc"] > best[key]["val_acc"]:
            best[key] = r
    return sorted(best.values(), key=lambda r: (r["mixer"], r["width"]))


def _markdown(best: list[dict], sweep: MQARSweep, command: str) -> str:
    task = best[0]["task"] if best else {}
    lines = [
        "# MQAR comparison", "",
        f"Command: `{command}`  ",
        f"Task: T={task.get('seq_len')}, {task.get('num_kv_pairs')} key-value pairs, vocab {task.get('vocab_size')}; "
        f"widths {sweep.widths}; lr grid {sweep.lrs} (best shown); equal steps per run.", "",
        "| layer | width | state size | params | best lr | steps | val acc | val loss | train s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in best:
        lines.append(f"| {r['mixer']} | {r['width']} | {r['state_size']:,} | {r['params']:,} | {r['lr']:g} | "
                     f"{r['steps']} | {r['val_acc']:.3f} | {r['val_loss']:.3f} | {r['train_seconds']:.0f} |")
    return "\n".join(lines)


def _plot(best: list[dict], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: skipping %s", path)
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for mixer in sorted({r["mixer"] for r in best}):
        pts = sorted((r for r in best if r["mixer"] == mixer), key=lambda r: r["state_size"])
        ax.plot([max(r["state_size"], 1) for r in pts], [r["val_acc"] for r in pts], marker="o", label=mixer)
    ax.set_xscale("log")
    ax.set_xlabel("state size per sequence (elements, log)")
    ax.set_ylabel("MQAR query accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("MQAR accuracy vs state size (best lr per point)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_mqar_sweep(sweep: MQARSweep, progress: bool = True) -> dict:
    """Run the sweep; write ``results.json``, ``results.md``, ``results.png`` to ``sweep.out``."""
    sweep.validate()
    command = " ".join(shlex.quote(a) for a in sys.argv)
    runs = [(r, w, lr) for r in sweep.recipes for w in sweep.widths for lr in sweep.lrs]
    records = []
    quiet = ["lightning.pytorch", "lightning.fabric", "lightning"]
    levels = {n: logging.getLogger(n).level for n in quiet}
    for n in quiet:
        logging.getLogger(n).setLevel(logging.WARNING)
    try:
        bar = tqdm(runs, desc="mqar", disable=not progress, file=sys.stderr)
        for recipe, width, lr in bar:
            bar.set_postfix_str(f"{Path(recipe).stem} d={width} lr={lr:g}")
            records.append(_run_one(recipe, width, lr, sweep.max_steps))
            logger.info("%s d=%d lr=%g: acc %.3f", Path(recipe).stem, width, lr, records[-1]["val_acc"])
    finally:
        for n, lv in levels.items():
            logging.getLogger(n).setLevel(lv)
    best = _best(records)
    out = Path(sweep.out)
    out.mkdir(parents=True, exist_ok=True)
    md = _markdown(best, sweep, command)
    doc = {"schema": "seqmix.compare.mqar/v1", "command": command, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "sweep": dataclasses.asdict(sweep), "runs": records, "best": best}
    (out / "results.json").write_text(json.dumps(doc, indent=1))
    (out / "results.md").write_text(md + "\n")
    png = _plot(best, out / "results.png")
    return {"markdown": md, "records": records, "best": best,
            "paths": {"json": out / "results.json", "md": out / "results.md", "png": png}}
