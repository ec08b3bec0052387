"""Equal-budget comparisons of registry layers: the MQAR sweep (accuracy against state size) and the text-to-video
baselines.

A comparison takes layer names (default: every registry layer that mixes tokens) and builds every run from ONE base
recipe per task (``recipes/base/<task>.yaml``) plus the layer's name and config: the documented overrides of
``recipes/<task>/<layer>.yaml`` where that file exists (see :func:`recipe_overrides`), the layer's defaults
otherwise. Every run is trained through the same LightningCLI path as ``seqmix fit --config RECIPE`` with only the
swept fields overridden (model width, learning rate, step budget), so a comparison is a set of recipe runs that
anyone can re-run one by one (the command of each is stored with its record).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

__all__ = ["MQARSweep", "VideoComparison", "base_recipe", "layer_args", "recipe_dir", "recipe_overrides",
           "run_mqar_sweep", "run_video_comparison", "token_mixers"]


def recipe_dir() -> Path:
    """``recipes/`` of the working directory if present, else the one next to the seqmix package."""
    here = Path("recipes")
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[1] / "recipes"


def base_recipe(task: str) -> Path:
    """The base recipe every run of ``task`` (``"mqar"`` or ``"t2v"``) starts from."""
    return recipe_dir() / "base" / f"{task}.yaml"


def token_mixers() -> list[str]:
    """Every registry layer that mixes tokens of a plain sequence (the default layers of a comparison)."""
    from seqmix import layers as L

    return [n for n in L.sequence_mixers() if L.mixer_class(n).mixes_tokens]


#: Keys (dotted, under the recipe root) a per-layer recipe may change relative to its task's base recipe.
_LAYER_KEYS = ("model.init_args.model.mixer", "model.init_args.model.mixer_config",
               "model.init_args.model.num_heads", "trainer.default_root_dir")


def _flat(doc: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in doc.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "mixer_config":  # a mixer config is one value
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def recipe_overrides(task: str, recipe: str | Path) -> dict:
    """What ``recipe`` changes relative to ``task``'s base recipe, as ``{dotted key: value}``.

    A per-layer recipe must be the base recipe with only the layer's settings changed (:data:`_LAYER_KEYS`):
    anything else raises, so the base recipe stays the one place that sets what every layer shares."""
    import yaml

    base = _flat(yaml.safe_load(base_recipe(task).read_text()))
    doc = _flat(yaml.safe_load(Path(recipe).read_text()))
    missing = sorted(set(base) - set(doc))
    diff = {k: v for k, v in doc.items() if k not in base or base[k] != v}
    extra = sorted(set(diff) - set(_LAYER_KEYS))
    if missing or extra:
        raise ValueError(f"{recipe}: a {task} recipe must be {base_recipe(task)} with only {', '.join(_LAYER_KEYS)} "
                         f"changed; differs in {extra}, lacks {missing}")
    return diff


def layer_args(task: str, layer: str | None) -> list[str]:
    """LightningCLI arguments for ``layer``'s run of ``task`` (None: no global layer): the base recipe, the layer's
    name, and its documented overrides from ``recipes/<task>/<layer>.yaml`` if that file sets this layer."""
    # No layer: the base recipe's own `mixer: null` stands (a `mixer=null` argument would reach the typed config as
    # the string "None").
    over: dict = {"model.init_args.model.mixer_config": {}}
    if layer is not None:
        over["model.init_args.model.mixer"] = layer
    own = recipe_dir() / task / f"{layer}.yaml"
    if layer is not None and own.is_file():
        doc = recipe_overrides(task, own)
        if doc.get("model.init_args.model.mixer", layer) == layer:
            over.update(doc)
    over.pop("trainer.default_root_dir", None)
    args = ["--config", str(base_recipe(task))]
    for k, v in over.items():
        args.append(f"--{k}={v if isinstance(v, str) else json.dumps(v)}")  # JSON is YAML
    return args


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


def _check_layers(names: list, allow_none: bool) -> None:
    from seqmix import layers as L

    if not names:
        raise ValueError("no layers given")
    bad = [n for n in names if not ((allow_none and n == "none") or n in L.available())]
    if bad:
        raise ValueError(f"unknown layer(s) {bad}; valid: {', '.join((['none'] if allow_none else []) + L.available())}")


def _fit_recipe(recipe_args: list[str], overrides: list[str], max_steps: int | None):
    """Train one run (``--config`` arguments + overrides) through the same LightningCLI path as ``seqmix fit``;
    returns (cli, train seconds, validation metrics)."""
    from seqmix.lightning_cli import run_lightning

    args = [*recipe_args, *overrides,
            "--trainer.logger=false", "--trainer.enable_checkpointing=false",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    if max_steps:
        args.append(f"--trainer.max_steps={max_steps}")
    cli = run_lightning(args, run=False)
    t0 = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    train_s = time.perf_counter() - t0
    (metrics,) = cli.trainer.validate(cli.model, cli.datamodule, verbose=False)
    return cli, train_s, {k: float(v) for k, v in metrics.items()}


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


def _default_jobs() -> int:
    """One process per CPU core without a GPU (small models use two single-threaded processes better than one
    two-threaded one: ~1.3x the throughput on a 2-core CPU), else 1."""
    import torch

    return 1 if torch.cuda.is_available() else max(1, os.cpu_count() or 1)


def _in_worker(fn, args: tuple, threads: int):
    """Process-pool entry point: ``fn(*args)`` with ``threads`` intra-op threads and Lightning's banners silenced."""
    import warnings

    import torch

    torch.set_num_threads(threads)
    # a Lightning-internal deprecation notice that every spawned process would print again
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    with _QuietLightning():
        return fn(*args)


def _map_runs(fn, runs: list[tuple], jobs: int, label, desc: str, progress: bool, on_done) -> None:
    """Call ``fn(*run)`` for every run, ``jobs`` at a time in spawned processes (1: in this process), passing each
    result to ``on_done`` as it completes. ``label(run)`` names a run on the progress bar."""
    jobs = max(1, min(jobs, len(runs)))
    bar = tqdm(total=len(runs), desc=desc, disable=not progress, file=sys.stderr)
    if jobs == 1:
        with _QuietLightning():
            for run in runs:
                bar.set_postfix_str(label(run))
                on_done(fn(*run))
                bar.update()
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        threads = max(1, (os.cpu_count() or 1) // jobs)
        logger.info("%s: %d runs in %d processes x %d threads", desc, len(runs), jobs, threads)
        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_in_worker, fn, run, threads): run for run in runs}
            for fut in as_completed(futures):
                on_done(fut.result())
                bar.set_postfix_str(label(futures[fut]))
                bar.update()
    bar.close()


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


class _QuietLightning:
    """Silence Lightning's per-run banners while a comparison runs many recipes."""

    names = ("lightning.pytorch", "lightning.fabric", "lightning")

    def __enter__(self):
        self.levels = {n: logging.getLogger(n).level for n in self.names}
        for n in self.names:
            logging.getLogger(n).setLevel(logging.WARNING)

    def __exit__(self, *exc):
        for n, lv in self.levels.items():
            logging.getLogger(n).setLevel(lv)


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


# ------------------------------------------------------------------------------------------------ video


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
