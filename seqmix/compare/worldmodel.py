"""World-model comparison (``seqmix compare worldmodel``): the models of Po et al. 2025 (arXiv 2505.20171) trained
with equal budgets on the same maze trajectories, then scored on retrieval (:mod:`seqmix.tasks.worldmodel_eval`):
the exploration of each held-out trajectory is the context, the return path is generated from its actions, and
every generated frame's PSNR / SSIM is binned by the distance in frames to the last time that place was seen.

Every run is a model recipe of a recipe set (``recipes/<set>/<model>.yaml``: the set's base recipe
``recipes/base/<set with / as ->.yaml`` with only the model's mixers and MLP width changed, :func:`model_overrides`;
sets: ``worldmodel``, the default, and ``worldmodel/memory``, the memory study) trained through the same
LightningCLI path as ``seqmix fit``
with only the budget, the seed and the data directory overridden; ``S`` seeds per model (model init, noise draws
and data order; the trajectories are the same for all). Output: ``results.md`` (table: mean and interval over seeds
per metric, :func:`seqmix.utils.stats.summarize`), ``results.json`` (every run, every frame's scores), ``results.png``
(PSNR against distance, one line per model, error bars, the frame-local attention window marked) and rollout GIFs
(generated beside ground truth).
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

from seqmix.backbones.wm_config import world_model, world_model_names
from seqmix.compare.common import RunLog, _default_jobs, _fit_recipe, _map_runs, base_recipe, cost_estimate, \
    recipe_dir, recipe_overrides
from seqmix.utils.plots import pyplot, save_figure
from seqmix.utils.stats import summarize

logger = logging.getLogger(__name__)

__all__ = ["WorldModelComparison", "run_worldmodel_comparison", "model_overrides", "recipe_models", "MODEL_KEYS"]

#: Keys (dotted) a model recipe may change relative to its set's base recipe.
MODEL_KEYS = ("model.init_args.model.mixers", "model.init_args.model.mlp_ratio", "trainer.default_root_dir")
#: Recipe sets: folders under ``recipes/`` of model recipes (each on its base ``recipes/base/<set, / as ->.yaml``).
RECIPE_SETS = ("worldmodel", "worldmodel/memory")
#: Metrics of the table, each summarised over seeds.
METRICS = ("psnr", "psnr_near", "psnr_far", "ssim", "ssim_far", "val_loss_return")


def _base_task(recipes: str) -> str:
    """The base recipe name (``recipes/base/<name>.yaml``) of a recipe set."""
    if recipes not in RECIPE_SETS:
        raise ValueError(f"unknown recipe set {recipes!r}; valid: {', '.join(RECIPE_SETS)}")
    return recipes.replace("/", "-")


def model_overrides(recipe: str | Path, recipes: str = "worldmodel") -> dict:
    """What a model recipe of the set ``recipes`` changes relative to the set's base recipe, as ``{dotted key:
    value}``; anything but :data:`MODEL_KEYS` raises (the base recipe is the one place that sets what every model
    shares; the MLP width is there to match parameter counts)."""
    return recipe_overrides(_base_task(recipes), recipe, MODEL_KEYS)


def recipe_models(recipes: str = "worldmodel") -> list[str]:
    """The world models (:data:`~seqmix.backbones.wm_config.WORLD_MODELS`, in its order: the paper's model first)
    with a recipe in the set ``recipes`` (``worldmodel``: every one; a test holds the lists equal)."""
    folder = recipe_dir() / recipes
    _base_task(recipes)
    return [m for m in world_model_names() if (folder / f"{m}.yaml").is_file()]


@dataclass(kw_only=True)
class WorldModelComparison:
    """World models trained with the same data, steps and batch, then scored on retrieval.

    Attributes:
        recipes: the recipe set: ``"worldmodel/memory"`` (default: the memory study's setting, where the models
            separate beyond the frame-local window: flat-colour 8x8 mazes, window 2, parameter counts matched, 3000
            steps) or ``"worldmodel"`` (the first comparison: 32x32 foggy mazes, 200 steps, no model told apart).
        models: model names with a recipe ``recipes/<recipes>/<name>.yaml`` (default: every one there).
        seeds: seeds per model (model init, noise draws, data order); intervals need >= 2.
        max_steps: optimizer steps per run (the equal budget; None: the recipe set's, 200 / 3000).
        num_trajectories: trajectories written (None: the base recipe's); the last ``eval_trajectories`` are
            held out and scored.
        eval_trajectories: held-out trajectories (validation loss and retrieval).
        sample_steps: DDIM steps per generated chunk in retrieval.
        gifs: rollouts written as GIFs per model (first seed).
        data_overrides: extra CLI arguments for the data (e.g. ``--data.init_args.generate.explore_frames=8``).
        jobs: runs trained at once in separate processes (0 = one per CPU core without a GPU, else 1).
        resume: keep the finished runs of an earlier call with the same settings (``out/runs.jsonl``, one record
            per run, appended as each finishes) and train only the missing ones.
        out: output directory.
        data: where the trajectories are written once and read by every run (default ``out/data``).
    """

    recipes: str = "worldmodel/memory"
    models: list[str] | None = None
    seeds: int = 1
    max_steps: int | None = None
    num_trajectories: int | None = None
    eval_trajectories: int = 8
    sample_steps: int = 10
    gifs: int = 2
    data_overrides: list[str] = field(default_factory=list)
    jobs: int = 0
    resume: bool = False
    out: str = "runs/compare-worldmodel"
    data: str | None = None

    def __post_init__(self) -> None:
        if self.models is None:
            self.models = recipe_models(self.recipes)

    def num_jobs(self) -> int:
        return self.jobs or _default_jobs()

    def recipe(self, model: str) -> Path:
        """The recipe file of ``model`` in this comparison's set."""
        return recipe_dir() / self.recipes / f"{model}.yaml"

    @classmethod
    def quick_config(cls, **kw) -> "WorldModelComparison":
        """The smoke run (:meth:`quick`) of ``WorldModelComparison(**kw)``."""
        return cls(**kw).quick()

    def quick(self) -> "WorldModelComparison":
        """A smoke-sized copy: two models, one seed, 2 steps on tiny trajectories (8 + 4 frames)."""
        return dataclasses.replace(
            self, models=self.models[:2], seeds=1, max_steps=2, num_trajectories=6, eval_trajectories=2,
            sample_steps=2, gifs=1, jobs=1, data_overrides=["--data.init_args.generate.explore_frames=8",
                                                            "--data.init_args.generate.return_frames=4",
                                                            "--data.init_args.batch_size=2"])

    def validate(self) -> None:
        if not self.models:
            raise ValueError(f"no models given; valid: {', '.join(recipe_models(self.recipes))}")
        have = recipe_models(self.recipes)
        for m in self.models:
            world_model(m)  # an unknown or former name: one error naming the valid ones
            if m not in have:
                raise ValueError(f"model {m!r} has no recipe in recipes/{self.recipes}/; there: {', '.join(have)}")
            model_overrides(self.recipe(m), self.recipes)
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 (or None: the recipe's), got {self.max_steps}")
        for name in ("seeds", "eval_trajectories", "sample_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.jobs < 0 or self.gifs < 0:
            raise ValueError(f"jobs and gifs must be >= 0, got {self.jobs}, {self.gifs}")

    def data_args(self) -> list[str]:
        n = [f"--data.init_args.num_trajectories={self.num_trajectories}"] if self.num_trajectories else []
        return [f"--data.init_args.path={self.data or Path(self.out) / 'data'}", *n,
                f"--data.init_args.val_trajectories={self.eval_trajectories}", *self.data_overrides]


def _prepare_data(cmp: WorldModelComparison) -> dict:
    """Write the trajectories once (before runs start in parallel) through the recipe's data module."""
    from seqmix.lightning_cli import run_lightning

    cli = run_lightning(["--config", str(base_recipe(_base_task(cmp.recipes))), *cmp.data_args(),
                         "--trainer.logger=false"], run=False)
    cli.datamodule.prepare_data()
    return cli.datamodule.maze_spec()


def _references(cmp: WorldModelComparison, k: int) -> dict:
    """Retrieval scores of model-free predictions on the held-out return paths: the mean training frame (of up to 64
    training trajectories) and the last context frame repeated; a model that recalls nothing reaches about these."""
    import torch

    from seqmix.data.maze_shards import MazeClips
    from seqmix.tasks.worldmodel_eval import frame_scores

    d = MazeClips(cmp.data or Path(cmp.out) / "data")
    n, E = d.num_trajectories, d.explore_frames
    n_train = n - cmp.eval_trajectories
    mean = torch.stack([d[i]["frames"] for i in range(max(0, n_train - 64), n_train)]).mean((0, 1))
    val = [d[i] for i in range(n_train, n)]
    truth = torch.stack([v["frames"][E:] for v in val]).flatten(0, 1)
    dist = torch.stack([v["distance"][E:] for v in val]).flatten()
    preds = {"mean training frame": mean.expand_as(truth),
             "last context frame": torch.stack([v["frames"][E - 1][None].expand_as(v["frames"][E:]) for v in val]
                                               ).flatten(0, 1)}
    out = {}
    for name, pred in preds.items():
        s = frame_scores(pred, truth)
        far = dist > k
        out[name] = {"psnr": float(s["psnr"].mean()), "psnr_far": float(s["psnr"][far].mean()) if far.any() else None,
                     "ssim": float(s["ssim"].mean())}
    return out


def _window(config) -> int | None:
    """The frame-local attention window k of a model (None without one)."""
    ks = [cfg.get("window_frames") for layer in config.mixers for n, cfg in layer if n == "frame_local_attn"]
    return max(ks) if ks else None


def _run_args(name: str, seed: int, cmp: WorldModelComparison) -> tuple[list[str], list[str]]:
    """``(recipe arguments, overrides)`` of one run: what its record stores and resume matches."""
    over = [f"--seed_everything={seed}", f"--model.init_args.seed={seed}", f"--data.init_args.seed={seed}",
            *cmp.data_args(), "--trainer.val_check_interval=null", "--trainer.check_val_every_n_epoch=1000000"]
    return ["--config", str(cmp.recipe(name))], over


def _run(name: str, seed: int, cmp: WorldModelComparison) -> dict:
    """Train one model with one seed, score it on retrieval; returns its record."""
    import torch

    from seqmix.tasks.worldmodel_eval import memory_probe, retrieval, write_rollout_gif

    args, over = _run_args(name, seed, cmp)
    cli, train_s, metrics = _fit_recipe(args, over, cmp.max_steps)
    task, dm = cli.model, cli.datamodule
    items = [dm._val[i] for i in range(len(dm._val))]
    frames = torch.stack([it["frames"] for it in items])
    actions = torch.stack([it["actions"] for it in items])
    distance = torch.stack([it["distance"] for it in items])
    E = dm.maze_spec()["explore_frames"]
    res = retrieval(task.model, frames, actions, distance, E, num_steps=cmp.sample_steps, seed=seed)
    # the memory metric: one-step predictions at the maximum noise, split at the window every recipe shares
    probe = memory_probe(task.model, frames, actions, distance, E, task.model.config.window_frames, seed=seed)
    gifs = []
    if seed == 0:
        for i in range(min(cmp.gifs, len(items))):
            p = Path(cmp.out) / "gifs" / f"{name}-trajectory{items[i]['index']}.gif"
            gifs.append(str(write_rollout_gif(res.generated[i], frames[i, E:], p)))
    c = task.model.config
    return {"model": name, "seed": seed, "args": args + over, "mixers": c.mixer_names(), "window": _window(c),
            "params": task.model.num_params(), "steps": int(cli.trainer.global_step), "train_seconds": train_s,
            "threads": torch.get_num_threads(), "metrics": metrics, "explore_frames": E,
            "return_frames": frames.shape[1] - E, "psnr": res.psnr, "ssim": res.ssim, "lpips": res.lpips,
            "distance": res.distance, "seconds_per_frame": res.seconds_per_frame / len(items),
            "state_bytes_per_sequence": [b // len(items) for b in res.state_bytes], "gifs": gifs,
            "memory": probe.summary(), "memory_window": probe.window}


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _per_seed(r: dict, k: int) -> dict:
    """One run's scalar metrics: PSNR / SSIM over every return frame, within (d <= k) and beyond (d > k) the
    frame-local window of ``k`` frames."""
    near = [i for i, d in enumerate(r["distance"]) if 0 < d <= k]
    far = [i for i, d in enumerate(r["distance"]) if d > k]
    return {"psnr": _mean(r["psnr"]), "psnr_near": _mean([r["psnr"][i] for i in near]),
            "psnr_far": _mean([r["psnr"][i] for i in far]), "ssim": _mean(r["ssim"]),
            "ssim_far": _mean([r["ssim"][i] for i in far]),
            "val_loss_return": r["metrics"].get("val/loss_return", float("nan"))}


def _summary(records: list[dict], models: list[str], k: int) -> dict:
    import math

    from seqmix.tasks.worldmodel_eval import bin_by_distance

    out = {}
    for m in models:
        rs = [r for r in records if r["model"] == m]
        per = [_per_seed(r, k) for r in rs]
        s = {key: summarize([p[key] for p in per]).as_dict() for key in METRICS
             if all(math.isfinite(p[key]) for p in per)}
        bins: dict[tuple, list[float]] = {}
        for r in rs:
            for b in bin_by_distance(r["psnr"], r["distance"], k):
                bins.setdefault((b["lo"], b["hi"], b["n"]), []).append(b["mean"])
        s["psnr_by_distance"] = [{"lo": lo, "hi": hi, "n": n, **summarize(v).as_dict()}
                                 for (lo, hi, n), v in sorted(bins.items())]
        s["seconds_per_frame"] = _mean([r["seconds_per_frame"] for r in rs])
        s["state_bytes"] = rs[0]["state_bytes_per_sequence"]
        s["params"], s["train_seconds"] = rs[0]["params"], _mean([r["train_seconds"] for r in rs])
        s["window"] = rs[0]["window"]
        if all("memory" in r for r in rs):  # {source: {metric: seed summary}} over the seeds' probe summaries
            s["memory"] = {src: {key: summarize([r["memory"][src][key] for r in rs]).as_dict()
                                 for key in rs[0]["memory"][src]
                                 if all(math.isfinite(r["memory"][src][key]) for r in rs)}
                           for src in rs[0]["memory"]}
        out[m] = s
    return out


def _fmt(s: dict | None, fmt: str = "{:.2f}") -> str:
    if not s:
        return "-"
    from seqmix.utils.stats import SeedSummary

    return SeedSummary(**{k: s[k] for k in ("mean", "low", "high", "n", "interval")}).format(fmt)


def _markdown(summary: dict, records: list[dict], cmp: WorldModelComparison, command: str, k: int) -> str:
    r0 = records[0]
    n_int = {1: "one seed: no interval", 2: "2 seeds: [min, max]"}.get(cmp.seeds, f"{cmp.seeds} seeds: 95% t interval")
    lines = [
        "# World-model comparison: retrieval on procedural mazes (CPU scale)", "",
        f"Command: `{command}`  ",
        f"Every model: {r0['steps']} steps on the same trajectories ({r0['explore_frames']} exploration frames, then "
        f"{r0['return_frames']} frames walking them back), diffusion forcing + long-context training; retrieval on "
        f"{cmp.eval_trajectories} held-out trajectories: the exploration is the clean context, the return path is "
        f"generated from its actions ({cmp.sample_steps} DDIM steps per chunk) and scored against ground truth. "
        f"near / far: frames whose place was last seen <= / > k = {k} frames earlier (the frame-local attention "
        f"window). Values: mean [interval] over seeds ({n_int}). train s: wall seconds per run "
        f"({r0['threads']} CPU thread(s)); ms/frame: rollout time per generated frame and sequence; state: carried "
        "state per sequence after the rollout.", "",
        "| model | mixers | params | train s | val loss (return) | PSNR | PSNR near | PSNR far | SSIM | SSIM far | "
        "ms/frame | state KiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m, s in summary.items():
        lines.append(
            f"| {m} | {'+'.join(next(r['mixers'] for r in records if r['model'] == m))} | {s['params']:,} | "
            f"{s['train_seconds']:.0f} | {_fmt(s.get('val_loss_return'), '{:.4f}')} | {_fmt(s.get('psnr'))} | "
            f"{_fmt(s.get('psnr_near'))} | {_fmt(s.get('psnr_far'))} | {_fmt(s.get('ssim'), '{:.3f}')} | "
            f"{_fmt(s.get('ssim_far'), '{:.3f}')} | {1000 * s['seconds_per_frame']:.1f} | "
            f"{s['state_bytes'][1] / 1024:.1f} |")
    lines += ["", "PSNR (dB) by distance to the last sighting (frames):", "",
              "| model | " + " | ".join(f"({b['lo']}, {b['hi']}]" for b in next(iter(summary.values()))["psnr_by_distance"])
              + " |", "|---|" + "---:|" * len(next(iter(summary.values()))["psnr_by_distance"])]
    for m, s in summary.items():
        lines.append(f"| {m} | " + " | ".join(_fmt(b) for b in s["psnr_by_distance"]) + " |")
    lines += _memory_markdown(summary, records)
    return "\n".join(lines)


def _memory_markdown(summary: dict, records: list[dict]) -> list[str]:
    """The memory metric's table (empty for records without it): per model, the one-step prediction at maximum
    noise of the return frames within / beyond the window, beside the model-free references."""
    if not all("memory" in s for s in summary.values()):
        return []
    w = records[0].get("memory_window")
    refs = ("mean_frame", "last_context", "best_window")
    first = next(iter(summary.values()))["memory"]
    lines = ["", f"Memory (the metric that isolates it): every return frame predicted in one step at the maximum "
             f"noise level with the exploration clean and the whole return path at that level; within / beyond: "
             f"recall distance <= / > {w} frames. References without memory: the exploration's mean frame, its last "
             "frame, the best of its last k frames (an oracle copy). PSNR dB, SSIM.", "",
             "| model | PSNR within | PSNR beyond | SSIM beyond | " + " | ".join(f"{r} PSNR beyond" for r in refs) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(refs)]
    for m, s in summary.items():
        mem = s["memory"]
        lines.append(f"| {m} | {_fmt(mem['model'].get('psnr_within'))} | {_fmt(mem['model'].get('psnr_beyond'))} | "
                     f"{_fmt(mem['model'].get('ssim_beyond'), '{:.3f}')} | "
                     + " | ".join(_fmt(mem[r].get("psnr_beyond")) for r in refs if r in first) + " |")
    return lines


def _plot(summary: dict, path: Path, k: int) -> Path | None:
    plt = pyplot(path)
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.3))
    for m, s in summary.items():
        bins = s["psnr_by_distance"]
        x = [(b["lo"] + b["hi"]) / 2 for b in bins]
        y = [b["mean"] for b in bins]
        err = [[b["mean"] - b["low"] for b in bins], [b["high"] - b["mean"] for b in bins]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=m, lw=2.2 if m == world_model_names()[0] else 1.2)
    ax.axvline(k, color="k", ls="--", lw=1)
    ax.text(k, ax.get_ylim()[1], f" frame-local window k={k}", va="top", fontsize=8)
    ax.set_xlabel("frames since the place was last seen (bin centre)")
    ax.set_ylabel("retrieval PSNR (dB)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Retrieval PSNR against distance to the last sighting")
    return save_figure(fig, path)


def run_worldmodel_comparison(cmp: WorldModelComparison, progress: bool = True) -> dict:
    """Train and score every model x seed; write results.{md,json,png} and GIFs to ``cmp.out``."""
    cmp.validate()
    # the command as typed: the installed entry point by its name, not its path
    argv = ["seqmix", *sys.argv[1:]] if Path(sys.argv[0]).name == "seqmix" else sys.argv
    command = " ".join(shlex.quote(a) for a in argv)
    out = Path(cmp.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    _prepare_data(cmp)
    log = RunLog(out)
    runs = [(m, s, cmp) for m in cmp.models for s in range(cmp.seeds)]
    # same arguments (recipe, seed, data) and, where the call fixes it, the same step budget
    records, runs = log.start(runs, lambda m, s, c: sum(_run_args(m, s, c), []),
                              lambda rec: cmp.max_steps is None or rec.get("steps") == cmp.max_steps, cmp.resume)

    def done(rec: dict) -> None:
        records.append(rec)
        log.append(rec)
        logger.info("%s seed %d: retrieval PSNR %.2f dB", rec["model"], rec["seed"], _mean(rec["psnr"]))

    # the most expensive models first (their layers' cost estimates), so parallel processes finish close together
    cost = {m: sum(cost_estimate(n) for n in world_model(m).layers) for m in cmp.models}
    runs.sort(key=lambda r: (-cost[r[0]], r[1]))
    _map_runs(_run, runs, cmp.num_jobs(), lambda r: f"{r[0]} seed {r[1]}", "worldmodel", progress, done)
    order = {m: i for i, m in enumerate(cmp.models)}
    records.sort(key=lambda r: (order[r["model"]], r["seed"]))
    k = next((r["window"] for r in records if r["window"]), 1)
    summary = _summary(records, cmp.models, k)
    refs = _references(cmp, k)
    md = _markdown(summary, records, cmp, command, k) + "\n\nModel-free references on the same return paths: " + \
        "; ".join(f"{n}: PSNR {r['psnr']:.2f} dB (far {r['psnr_far'] or float('nan'):.2f}), SSIM {r['ssim']:.3f}"
                  for n, r in refs.items()) + "."
    wall = time.perf_counter() - t0
    for r in records:  # the memory metric of the model itself, flat in each run's record
        r.update(r.get("memory", {}).get("model", {}))
    doc = {"schema": "seqmix.compare.worldmodel/v1", "command": command,
           "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "wall_seconds": wall, "window": k,
           "references": refs, "comparison": dataclasses.asdict(cmp), "summary": summary, "runs": records}
    (out / "results.json").write_text(json.dumps(doc, indent=1, default=str))
    (out / "results.md").write_text(md + "\n")
    png = _plot(summary, out / "results.png", k)
    return {"markdown": md, "records": records, "summary": summary, "wall_seconds": wall,
            "paths": {"json": out / "results.json", "md": out / "results.md", "png": png}}
