"""The MQAR sweep: accuracy against state size, every layer x width x learning rate at the same data and budget."""

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

__all__ = ["MQARSweep", "run_mqar_sweep"]


@dataclass(kw_only=True)
class MQARSweep:
    """An MQAR sweep: every layer x width x learning rate, the same data and step budget for all.

    Attributes:
        layers, widths, lrs: the grid (every combination is one training run); layers are registry names (default:
            every layer that mixes tokens), each run is :func:`layer_args` of ``"mqar"``.
        max_steps: steps per run (None: the recipe's epoch of data).
        jobs: runs trained at once in separate processes, each with ``cpu_count // jobs`` threads. 0 = auto: one
            per CPU core when no GPU is visible (small models use two single-threaded processes better than one
            two-threaded one: ~1.3x the throughput on a 2-core CPU), else 1.
        out: output directory.
    """

    layers: list[str] = field(default_factory=token_mixers)
    widths: list[int] = field(default_factory=lambda: [32, 64])
    lrs: list[float] = field(default_factory=lambda: [3e-3])
    max_steps: int | None = None
    jobs: int = 0
    out: str = "runs/compare-mqar"

    def num_jobs(self) -> int:
        return self.jobs or _default_jobs()

    def quick(self) -> "MQARSweep":
        """A smoke-sized copy: first two layers, one width, one lr, 3 steps."""
        return dataclasses.replace(self, layers=self.layers[:2], widths=self.widths[:1], lrs=self.lrs[:1],
                                   max_steps=3, jobs=1)

    def validate(self) -> None:
        _check_layers(self.layers, allow_none=False)
        if not base_recipe("mqar").is_file():
            raise FileNotFoundError(f"base recipe {base_recipe('mqar')} does not exist")
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"widths must be positive ints, got {self.widths}")
        if not self.lrs or min(self.lrs) <= 0:
            raise ValueError(f"lrs must be positive, got {self.lrs}")
        if self.jobs < 0:
            raise ValueError(f"jobs must be >= 0 (0 = auto), got {self.jobs}")


def _run_one(layer: str, width: int, lr: float, max_steps: int | None) -> dict:
    import torch

    run_args = layer_args("mqar", layer) + [f"--model.init_args.model.dim={width}", f"--model.init_args.lr={lr}"]
    cli, train_s, metrics = _fit_recipe(run_args, [], max_steps)
    model, dm, trainer = cli.model, cli.datamodule, cli.trainer
    lm = model.lm
    return {
        "layer": layer, "args": run_args, "mixer": "+".join(sorted(set(lm.mixer_names))), "width": width, "lr": lr,
        "steps": int(trainer.global_step), "train_seconds": train_s,
        "val_acc": metrics["val/acc"], "val_loss": metrics["val/loss"],
        "state_size": lm.state_size(seq_len=dm.cfg.seq_len), "params": sum(p.numel() for p in lm.parameters()),
        "threads": torch.get_num_threads(),
        "task": dataclasses.asdict(dm.cfg),
    }


def _best(records: list[dict]) -> list[dict]:
    best: dict[tuple, dict] = {}
    for r in records:
        key = (r["layer"], r["width"])
        if key not in best or r["val_acc"] > best[key]["val_acc"]:
            best[key] = r
    return sorted(best.values(), key=lambda r: (r["mixer"], r["width"]))


def _markdown(best: list[dict], sweep: MQARSweep, command: str) -> str:
    task = best[0]["task"] if best else {}
    lines = [
        "# MQAR comparison", "",
        f"Command: `{command}`  ",
        f"Task: T={task.get('seq_len')}, {task.get('num_kv_pairs')} key-value pairs, vocab {task.get('vocab_size')}; "
        f"widths {sweep.widths}; lr grid {sweep.lrs} (best shown); equal steps per run; "
        f"train s = wall seconds of one run ({best[0].get('threads', '?') if best else '?'} CPU thread(s) each).", "",
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
    runs = [(n, w, lr, sweep.max_steps) for n in sweep.layers for w in sweep.widths for lr in sweep.lrs]
    records = []

    def done(rec: dict) -> None:
        records.append(rec)
        logger.info("%s d=%d lr=%g: acc %.3f", rec["layer"], rec["width"], rec["lr"], rec["val_acc"])

    # widest first: the longest runs start early, so parallel processes finish close together
    runs.sort(key=lambda r: -r[1])
    _map_runs(_run_one, runs, sweep.num_jobs(), lambda r: f"{r[0]} d={r[1]} lr={r[2]:g}", "mqar", progress, done)
    records.sort(key=lambda r: (r["layer"], r["width"], r["lr"]))
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
