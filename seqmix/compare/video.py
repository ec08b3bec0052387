"""The text-to-video comparison: every global layer in the segmented DiT on the procedural storyboards, the same
data, steps and evaluation for all."""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from seqmix.compare.common import RunLog, _check_layers, _default_jobs, _fit_recipe, _map_runs, base_recipe, \
    curve_matches, layer_args, longest_first, token_mixers
from seqmix.compare.curves import LearningCurve, curve_at, first_crossing, plot_curves, tail_change, video_recall
from seqmix.compare.seeds import aggregate, interval_note, parse_seeds, ranking, seed_args, summary_of
from seqmix.utils.plots import pyplot, save_figure
from seqmix.utils.stats import SeedSummary

logger = logging.getLogger(__name__)

__all__ = ["VideoComparison", "run_video_comparison", "video_rows"]


@dataclass(kw_only=True)
class VideoComparison:
    """Text-to-video baselines on the procedural storyboards: the same data, steps and evaluation for all.

    Attributes:
        layers: global layers, registry names or ``"none"`` (local attention only); default: ``"none"`` and every
            registry layer that mixes tokens. Each run is :func:`layer_args` of ``"t2v"``.
        skip: layers left out of ``layers`` (``make run`` leaves out the two attention controls that at this scale
            score like local attention only, ``swa`` and ``local_attn``, to fit its time).
        max_steps: optimizer steps per recipe.
        num_train: training videos (the step budget decides how many are seen).
        samples: videos sampled (DDIM + guidance) per recipe and written as GIFs (0 = none).
        sample_steps: DDIM steps for those samples.
        seeds: a count ``S`` (seeds 0..S-1) or a list; each seed sets the Lightning seed, the data seed and the
            task's noise seed. Default 1 (``make run``'s budget); the table then says no interval was computed.
        curve_points: learning-curve evaluations of appearance recall after step 0 (0: none), evenly spaced.
        curve_batches: validation batches each learning-curve evaluation uses (the first ones: the same videos).
        resume: reuse the finished runs of an earlier call with the same ``out`` (its ``runs.jsonl``, matched by
            recipe arguments, steps, training-set size, curve and sample settings; not by the code, so only for the
            same checkout or one whose changes do not touch the kept runs) and continue an interrupted run from its
            last checkpoint (exactly). A layer whose recipe changed re-runs.
        equal_budget: the paper-style equal budget: recall is also read from the learning curves at this step (a
            curve point must fall there) beside the step at which the seed-mean recall first reaches
            ``recall_level`` and the final values; 0: no such reading.
        recall_level: the recall level whose first crossing is reported (chance is 1/#appearances).
        checkpoint_every: steps between a run's checkpoints (``out/checkpoints/<layer>-s<seed>/last.ckpt``,
            removed once the run is logged; 0: none, an interrupted run starts again).
        jobs: recipes trained at once in separate processes (0 = one per CPU core without a GPU, else 1).
        out: output directory.
    """

    layers: list[str] = field(default_factory=lambda: ["none", *token_mixers()])
    skip: list[str] = field(default_factory=list)
    max_steps: int = 500
    num_train: int = 4096
    samples: int = 1
    sample_steps: int = 20
    seeds: int | list[int] = 1
    curve_points: int = 10
    curve_batches: int = 2
    resume: bool = False
    equal_budget: int = 500
    recall_level: float = 0.5
    checkpoint_every: int = 100
    jobs: int = 0
    out: str = "runs/compare-video"

    def num_jobs(self) -> int:
        return self.jobs or _default_jobs()

    def run_layers(self) -> list[str]:
        """``layers`` without ``skip``, in order."""
        return [n for n in self.layers if n not in self.skip]

    @classmethod
    def quick_config(cls, **kw) -> "VideoComparison":
        """The smoke run (:meth:`quick`) of ``VideoComparison(**kw)``."""
        return cls(**kw).quick()

    def quick(self) -> "VideoComparison":
        return dataclasses.replace(self, layers=self.run_layers()[:2], skip=[], max_steps=2, num_train=16, samples=1,
                                   sample_steps=2, seeds=parse_seeds(self.seeds)[:1], curve_points=1,
                                   curve_batches=1, jobs=1)

    def validate(self) -> None:
        _check_layers(self.layers, allow_none=True)
        unknown = [n for n in self.skip if n not in self.layers]
        if unknown:
            raise ValueError(f"skip names {unknown}, which are not among the layers {self.layers}")
        if not self.run_layers():
            raise ValueError(f"skip {self.skip} leaves no layer to run")
        if not base_recipe("t2v").is_file():
            raise FileNotFoundError(f"base recipe {base_recipe('t2v')} does not exist")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.jobs < 0:
            raise ValueError(f"jobs must be >= 0 (0 = auto), got {self.jobs}")
        if self.equal_budget < 0 or not 0 < self.recall_level <= 1:
            raise ValueError(f"equal_budget must be >= 0 and recall_level in (0, 1], got {self.equal_budget}, "
                             f"{self.recall_level}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0 (0 = no checkpoints), got {self.checkpoint_every}")
        if self.curve_points < 0 or self.curve_batches < 1:
            raise ValueError(f"curve_points must be >= 0 and curve_batches >= 1, got {self.curve_points}, "
                             f"{self.curve_batches}")
        parse_seeds(self.seeds)


def _video_markdown(rows: list[dict], cmp: VideoComparison, command: str) -> str:
    S = max((len([k for k in r["metrics"] if k.startswith("val/loss_seg")]) for r in rows), default=0)
    n = len(parse_seeds(cmp.seeds))
    seg_cols = " | ".join(f"loss seg {i + 1}" for i in range(S))
    lines = [
        "# Text-to-video comparison (procedural storyboards, CPU scale)", "",
        f"Command: `{command}`  ",
        f"Every recipe: {cmp.max_steps} steps on the same storyboards (3 s segments; the character's appearance is "
        "named only in segment 1, absent in segment 2, back in segment 3), evaluated on the same held-out videos at "
        f"fixed noise. consistency = appearance recall in returning segments (chance {_chance(rows)}). "
        f"Seeds {parse_seeds(cmp.seeds)}; cells: {interval_note(n)}. "
        f"train s = mean wall seconds of one run ({rows[0].get('threads', '?') if rows else '?'} CPU thread(s) each)."
        + (f" Left out (`--skip`): {', '.join(cmp.skip)}." if cmp.skip else ""),
        "",
        f"| run | global layer | params | state | train s | val loss | {seg_cols} | consistency | PSNR | SSIM |",
        "|---|---|---:|---:|---:|---:|" + "---:|" * S + "---:|---:|---:|",
    ]
    for r in rows:
        def cell(metric: str, fmt: str) -> str:
            return summary_of(r, metric).format(fmt) if metric in r["summary"] else "nan"

        segs = " | ".join(cell(f"val/loss_seg{i}", "{:.4f}") for i in range(S))
        lines.append(
            f"| {r['name']} | {r['mixer'] or 'none (local attention)'} | {r['params']:,} | {r['state_size']:,} | "
            f"{r['train_seconds']:.0f} | {cell('val/loss', '{:.4f}')} | {segs} | {cell('val/consistency', '{:.3f}')} | "
            f"{cell('val/psnr', '{:.2f}')} | {cell('val/ssim', '{:.3f}')} |")
    if n >= 2 and all("val/consistency" in r["summary"] for r in rows):
        stmts = ranking(rows, "val/consistency", lambda r: r["name"])
        lines += ["", "Appearance recall, pairs whose intervals separate (no statement where they overlap): "
                  + ("; ".join(stmts) if stmts else "none") + "."]
    lines += _speed_and_level(rows, cmp, S)
    return "\n".join(lines)


#: A learning curve is flat when its seed-mean recall moves by at most this much over the last 25% of the steps
#: (a curve point scores ``curve_batches`` validation batches of 32 videos: steps of 1/32 or finer per seed).
FLAT = 0.05


def add_readings(rows: list[dict], cmp: VideoComparison) -> None:
    """Add each row's ``readings``: how fast (``recall_at_budget``, the seeds' learning-curve recall at step
    ``equal_budget``, None where no curve point falls there; ``first_step_at_level``, the first curve step whose
    seed-mean recall reaches ``recall_level``, None: never), how settled (``tail_change``: the seed-mean recall's
    rise over the last 25% of the steps, from a least-squares line; ``flat``: within ``FLAT``) and
    ``seconds_per_step`` (training wall time / steps)."""
    for r in rows:
        curves = r.get("curves") or []
        at = curve_at(curves, cmp.equal_budget) if cmp.equal_budget else None
        change = tail_change(curves) if curves else None
        r["readings"] = {"equal_budget": cmp.equal_budget, "recall_at_budget": at.as_dict() if at else None,
                         "recall_level": cmp.recall_level,
                         "first_step_at_level": first_crossing(curves, cmp.recall_level) if curves else None,
                         "tail_change": change, "flat": None if change is None else abs(change) <= FLAT + 1e-9,
                         "seconds_per_step": r["train_seconds"] / max(1, r.get("steps") or cmp.max_steps)}


def _speed_and_level(rows: list[dict], cmp: VideoComparison, S: int) -> list[str]:
    """The two readings of a long run as a markdown section: how fast (recall at the equal budget, first step the
    seed mean reaches ``recall_level``) and how far (final recall and returning-segment loss from the full
    validation); wall seconds per step. Empty for runs no longer than the equal budget or without curves."""
    budget = cmp.equal_budget
    if not budget or not cmp.curve_points or cmp.max_steps <= budget or not any(r.get("curves") for r in rows):
        return []
    last = f"val/loss_seg{S - 1}"
    lines = ["", f"## How fast and how far ({cmp.max_steps} steps)", "",
             f"Recall at step {budget} (the equal budget) and the first curve step at which the seed-mean recall "
             f"reaches {cmp.recall_level} come from the learning curves (appearance recall on the first "
             f"{cmp.curve_batches} validation batches, every {cmp.max_steps // cmp.curve_points} steps); final recall "
             f"and the returning segment's loss (segment {S}) from the full validation at step {cmp.max_steps}; "
             f"last 25%: the seed-mean recall's rise over the last quarter of the steps (least-squares line; flat "
             f"within {FLAT}). Cells: {interval_note(len(parse_seeds(cmp.seeds)))}.", "",
             f"| global layer | recall @ {budget} | first step >= {cmp.recall_level} | final recall | "
             f"loss seg {S} (final) | last 25% | s / step |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        rd = r["readings"]
        at = SeedSummary(**rd["recall_at_budget"]).format("{:.3f}") if rd["recall_at_budget"] else "n/a"
        first = rd["first_step_at_level"]
        final = summary_of(r, "val/consistency").format("{:.3f}") if "val/consistency" in r["summary"] else "nan"
        loss = summary_of(r, last).format("{:.4f}") if last in r["summary"] else "nan"
        tail = "n/a" if rd.get("tail_change") is None else f"{rd['tail_change']:+.3f}" + (
            "" if rd["flat"] else " (rising)" if rd["tail_change"] > 0 else " (falling)")
        lines.append(f"| {r['mixer'] or 'none (local attention)'} | {at} | "
                     f"{first if first is not None else 'never'} | {final} | {loss} | {tail} | "
                     f"{rd['seconds_per_step']:.3f} |")
    if len(parse_seeds(cmp.seeds)) >= 2 and all(r["readings"]["recall_at_budget"] for r in rows):
        stmts = ranking([{"name": r["name"], "summary": {"b": r["readings"]["recall_at_budget"]}} for r in rows],
                        "b", lambda r: r["name"])
        lines += ["", f"Recall at step {budget}, pairs whose intervals separate (no statement where they overlap): "
                  + ("; ".join(stmts) if stmts else "none") + "."]
    return lines


def _chance(rows: list[dict]) -> str:
    k = {r.get("num_appearances") for r in rows} - {None}
    return f"1/{k.pop()}" if len(k) == 1 else "1/#appearances"


def _video_plot(rows: list[dict], path: Path) -> Path | None:
    plt = pyplot(path)
    if plt is None:
        return None
    names = [r["name"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    cons = [r["metrics"].get("val/consistency", float("nan")) for r in rows]
    err = [[0.0, 0.0] if "val/consistency" not in r["summary"] else
           [r["summary"]["val/consistency"]["mean"] - r["summary"]["val/consistency"]["low"],
            r["summary"]["val/consistency"]["high"] - r["summary"]["val/consistency"]["mean"]] for r in rows]
    axes[0].bar(names, cons, yerr=list(zip(*err)) if err else None, capsize=3,
                color=["tab:gray" if r["mixer"] is None else "tab:blue" for r in rows])
    k = rows[0].get("num_appearances") or 8
    axes[0].axhline(1 / k, color="k", ls="--", lw=1, label="chance")
    axes[0].set_ylabel("appearance recall in returning segments")
    axes[0].set_ylim(0, 1)
    axes[0].legend()
    S = max(len([k for k in r["metrics"] if k.startswith("val/loss_seg")]) for r in rows)
    for r in rows:
        segs = [summary_of(r, f"val/loss_seg{i}") for i in range(S)]
        axes[1].errorbar(range(1, S + 1), [x.mean for x in segs], yerr=[[x.mean - x.low for x in segs],
                         [x.high - x.mean for x in segs]], marker="o", capsize=3, label=r["name"])
    axes[1].set_xticks(range(1, S + 1))
    axes[1].set_xlabel("segment position")
    axes[1].set_ylabel("denoising loss (fixed noise)")
    axes[1].legend(fontsize=7)
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=30)
        ax.grid(True, alpha=0.3)
    fig.suptitle("Global layers vs local attention on procedural storyboards")
    return save_figure(fig, path)


def run_video_comparison(cmp: VideoComparison, progress: bool = True) -> dict:
    """Train and evaluate every global layer with identical budgets; write results.{json,md,png} and sample GIFs."""
    cmp.validate()
    command = " ".join(shlex.quote(a) for a in sys.argv)
    out = Path(cmp.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    runs = [(layer, seed, cmp) for layer in cmp.run_layers() for seed in parse_seeds(cmp.seeds)]
    log = RunLog(out)
    first = parse_seeds(cmp.seeds)[0]

    def same(rec: dict) -> bool:
        sampled = bool(rec.get("samples")) if cmp.samples and rec.get("seed") == first else True
        return (rec.get("steps") == cmp.max_steps and rec.get("num_train") == cmp.num_train and sampled
                and curve_matches(rec, cmp.curve_points))

    kept, runs = log.start(runs, lambda name, seed, _: _video_args(name, seed), same, cmp.resume)
    records.extend(kept)
    # Longest runs first, the cheapest (no global layer) last: they fill the gaps while the other processes finish
    # (queued in the given order, one long run can end alone on one core while the others idle).
    queue = {n: i for i, n in enumerate(longest_first(list(dict.fromkeys(r[0] for r in runs))))}
    runs.sort(key=lambda r: queue[r[0]])

    def done(rec: dict) -> None:
        records.append(rec)
        log.append(rec)
        shutil.rmtree(_checkpoints(cmp, rec["name"], rec["seed"]), ignore_errors=True)  # the record is safe now
        logger.info("%s seed %d: val loss %.4f, consistency %.3f", rec["name"], rec["seed"], rec["metrics"]["val/loss"],
                    rec["metrics"].get("val/consistency", float("nan")))

    _map_runs(_video_run, runs, cmp.num_jobs(), lambda r: f"{r[0]} s{r[1]}", "t2v", progress, done)
    order = {n: i for i, n in enumerate(cmp.run_layers())}
    records.sort(key=lambda r: (order[r["name"]], r["seed"]))
    rows = video_rows(records)
    add_readings(rows, cmp)
    md = _video_markdown(rows, cmp, command)
    doc = {"schema": "seqmix.compare.video/v2", "command": command, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "comparison": dataclasses.asdict(cmp), "rows": rows, "runs": records}
    (out / "results.json").write_text(json.dumps(doc, indent=1, default=str))
    (out / "results.md").write_text(md + "\n")
    png = _video_plot(rows, out / "results.png")
    curves = None
    if cmp.curve_points:
        curves = plot_curves({r["name"]: r["curves"] for r in rows}, out / "curves.png",
                             "appearance recall, returning segment", "Text-to-video learning curves",
                             chance=1 / rows[0]["num_appearances"] if rows and rows[0].get("num_appearances") else None,
                             mark_step=cmp.equal_budget if 0 < cmp.equal_budget < cmp.max_steps else None)
    return {"markdown": md, "rows": rows, "runs": records,
            "paths": {"json": out / "results.json", "md": out / "results.md", "png": png, "curves": curves}}


def video_rows(records: list[dict]) -> list[dict]:
    """Per-seed run records -> one row per run name: every validation metric's mean (``metrics``), its interval
    (``summary``) and per-seed values (``values``), the learning curves of the seeds and the first seed's samples."""
    names = sorted({k for r in records for k in r["metrics"]})
    common = [k for k in names if all(k in r["metrics"] for r in records)]
    metrics = {k: (lambda r, k=k: r["metrics"][k]) for k in common}
    metrics["train_seconds"] = lambda r: r["train_seconds"]
    rows = aggregate(records, ("name",), metrics)
    for row in rows:
        first = row["records"][0]
        row.update({k: first[k] for k in ("mixer", "params", "state_size", "num_appearances", "threads", "steps",
                                          "args") if k in first})
        row["metrics"] = {k: row["summary"][k]["mean"] for k in common}
        row["train_seconds"] = row["summary"]["train_seconds"]["mean"]
        row["curves"] = [r["curve"] for r in row["records"] if r.get("curve")]
        if first.get("samples") is not None:
            row["samples"] = first["samples"]
        del row["records"]
    return rows


def _video_args(name: str, seed: int) -> list[str]:
    """The recipe arguments of one run (stored with its record; a resumed comparison matches finished runs by them)."""
    return layer_args("t2v", None if name == "none" else name) + seed_args(seed, model_seed=True)


def _checkpoints(cmp: VideoComparison, name: str, seed: int) -> Path:
    """The checkpoint folder of one run (an interrupted run continues from it with ``resume``)."""
    return Path(cmp.out) / "checkpoints" / f"{name}-s{seed}"


def _video_run(name: str, seed: int, cmp: VideoComparison) -> dict:
    """Train one global layer (``"none"``: local attention only) with the comparison's budget and ``seed``, evaluate
    it, sample it (first seed only); returns its record."""
    import torch

    run_args = _video_args(name, seed)
    curve = LearningCurve(video_recall, cmp.curve_points, cmp.curve_batches) if cmp.curve_points else None
    cli, train_s, metrics = _fit_recipe(
        run_args, [f"--data.init_args.num_train={cmp.num_train}", "--trainer.val_check_interval=null",
                 "--trainer.check_val_every_n_epoch=1000000"], cmp.max_steps, callbacks=(curve,) if curve else (),
        checkpoints=_checkpoints(cmp, name, seed), checkpoint_every=cmp.checkpoint_every, resume=cmp.resume)
    task = cli.model
    row = {"name": name, "seed": seed, "args": run_args, "mixer": task.dit.config.mixer,
           "steps": int(cli.trainer.global_step), "num_train": cmp.num_train, "curve": curve.curve if curve else None,
           "train_seconds": train_s, "threads": torch.get_num_threads(), "metrics": metrics,
           "params": sum(p.numel() for p in task.parameters()),
           "state_size": task.dit.state_size(seq_len=task.layout.total_tokens),
           "num_appearances": getattr(getattr(cli.datamodule, "cfg", None), "num_appearances", None)}
    if cmp.samples and seed == parse_seeds(cmp.seeds)[0]:
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
