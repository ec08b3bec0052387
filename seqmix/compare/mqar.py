"""The MQAR sweep: accuracy against state size, every layer x width x learning rate (x the layer's knobs) x seed at
the same data and budget; the best setting per (layer, width) is the one with the highest mean accuracy over seeds."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from seqmix.compare.common import RunLog, _check_layers, _default_jobs, _fit_recipe, _map_runs, base_recipe, \
    curve_matches, layer_args, portable_args, token_mixers
from seqmix.compare.curves import LearningCurve, mqar_accuracy, plot_curves
from seqmix.compare.knobs import knob_args, knob_grid, parse_knobs
from seqmix.compare.seeds import aggregate, interval_note, parse_seeds, ranking, seed_args, summary_of
from seqmix.utils.plots import pyplot, save_figure

logger = logging.getLogger(__name__)

__all__ = ["MQARSweep", "PRESETS", "run_mqar_sweep"]

#: Named grids. ``zoology``: Zoology's standard MQAR grid (vocabulary 8192, widths 64/128/256, 2 layers, 4 learning
#: rates ``logspace(-3, -1.5, 4)``) on the recipe's sequence length and pairs, sized for GPUs; ``cpu``: the committed
#: CPU study (the recipe's task at width 64, 3 learning rates, 3 seeds, three epochs' worth of fresh examples: 115,200,
#: 3600 steps of batch 32; curve point every 200 steps); ``cpu-1epoch``: the earlier CPU study (the recipe's 38,400
#: examples, 1200 steps), where leaving the task's plateau (~1/8 accuracy) within the budget was seed luck for Gated
#: DeltaNet, Mamba2, LaCT and TTT-MLP; ``smoke``: a check, not a comparison (~5 minutes on 2 cores): an easier task
#: (T = 64, 4 pairs), one seed, each layer at the learning rate it learns at, 1000 steps: every layer in its
#: published form leaves the plateau but LaCT, which is still rising at 1000 steps (0.48; a form that cannot learn,
#: as TTT's causal video hybrid, stays on it: 0.26). The sliding
#: window (8 tokens) is left out: it cannot reach the keys by design. ``cpu-vocab8192``: the cpu task (T = 128,
#: 8 pairs) at Zoology's vocabulary (8192) and depth (2 blocks), width 64: full attention, Gated DeltaNet, Mamba2,
#: TTT-Linear, TTT-MLP and LaCT, each at its learning rate of ``smoke``, one seed, 2000 steps (64,000 fresh
#: examples): whether each layer learns the task at Zoology's vocabulary, what a CPU affords of Zoology's standard
#: task (its training is ~22k steps of batch 256 over a mix of lengths: ``zoology``); one seed cannot rank.
_LEARNS_AT = {"full_attn": [3e-3], "gated_deltanet": [3e-3], "lact": [3e-3], "local_attn": [3e-3], "mamba2": [3e-3],
              "ttt_linear": [1e-2], "ttt_mlp": [1e-2]}
SMOKE_SEED = 1  # one seed: at width 64 Mamba2 leaves the plateau within 1000 steps with some seeds only (0: not)
PRESETS: dict[str, dict] = {
    "zoology": {"widths": [64, 128, 256], "num_layers": 2, "vocab_size": 8192,
                "lrs": [10 ** (-3 + 0.5 * i) for i in range(4)], "seeds": [0, 1]},
    "cpu": {"widths": [64], "lrs": [1e-3, 3e-3, 1e-2], "seeds": [0, 1, 2], "num_train": 115_200,
            "curve_points": 18},
    "cpu-1epoch": {"widths": [64], "lrs": [1e-3, 3e-3, 1e-2], "seeds": [0, 1, 2], "curve_points": 6},
    "smoke": {"layers": ["ttt_mlp", "gated_deltanet", "mamba2", "lact", "ttt_linear", "full_attn", "local_attn"],
              "widths": [64], "seq_len": 64, "num_kv_pairs": 4, "max_steps": 1000, "num_train": 32_000,
              "seeds": [SMOKE_SEED], "curve_points": 5, "checkpoint_every": 0, "lrs": _LEARNS_AT},
    "cpu-vocab8192": {"layers": ["full_attn", "gated_deltanet", "mamba2", "ttt_linear", "ttt_mlp", "lact"],
                      "widths": [64], "num_layers": 2, "vocab_size": 8192, "max_steps": 2000, "num_train": 64_000,
                      "seeds": [0], "curve_points": 10, "lrs": _LEARNS_AT},
}


@dataclass(kw_only=True)
class MQARSweep:
    """An MQAR sweep: every layer x width x learning rate x knob setting x seed, the same data and step budget for all.

    Attributes:
        layers, widths, lrs: the grid (every combination is one training run per seed); layers are registry names
            (default: every layer that mixes tokens), each run is :func:`layer_args` of ``"mqar"``. ``lrs`` is one
            list for every layer or ``{layer: [lrs]}`` (every layer of ``layers`` named; others ignored), for
            budgets too short to sweep: each layer at the learning rate it learns at.
        seeds: a count ``S`` (seeds 0..S-1) or a list; each seed sets the Lightning seed and the data seed.
        knobs: per-layer knobs swept beside the lr: ``None`` (the recipes' settings), ``"declared"`` (each layer's
            :attr:`~seqmix.layers.Mixer.Tooling.sweep_knobs`) or ``{layer: {field: [values]}}``.
        num_layers: blocks of the model (None: the recipe's).
        max_steps: steps per run (None: the recipe's epoch of data).
        num_train: training examples (None: the recipe's).
        seq_len, num_kv_pairs, vocab_size: the task (None: the recipe's; the vocabulary sets the data's and the
            model's).
        curve_points: learning-curve evaluations after step 0 (0: no curve), evenly spaced.
        curve_batches: validation batches each learning-curve evaluation uses (the first ones).
        resume: reuse the finished runs of an interrupted call with the same ``out`` (its ``runs.jsonl``, matched by
            their recipe arguments, steps and curve settings; not by the code, so only for the same checkout) and
            continue an interrupted run from its last checkpoint (exactly).
        checkpoint_every: steps between a run's checkpoints (``out/checkpoints/<run>/last.ckpt``, removed once the
            run is logged; 0: none, an interrupted run starts again).
        jobs: runs trained at once in separate processes, each with ``cpu_count // jobs`` threads. 0 = auto: one
            per CPU core when no GPU is visible (small models use two single-threaded processes better than one
            two-threaded one: ~1.3x the throughput on a 2-core CPU), else 1.
        out: output directory.
    """

    layers: list[str] = field(default_factory=lambda: token_mixers(causal=True))
    widths: list[int] = field(default_factory=lambda: [32, 64])
    lrs: list[float] | dict[str, list[float]] = field(default_factory=lambda: [3e-3])
    seeds: int | list[int] = 1
    knobs: dict | str | None = None
    num_layers: int | None = None
    max_steps: int | None = None
    num_train: int | None = None
    seq_len: int | None = None
    num_kv_pairs: int | None = None
    vocab_size: int | None = None
    curve_points: int = 8
    curve_batches: int = 4
    resume: bool = False
    checkpoint_every: int = 200
    jobs: int = 0
    out: str = "runs/compare-mqar"

    @classmethod
    def preset(cls, name: str, **overrides) -> "MQARSweep":
        """A named grid (:data:`PRESETS`) with ``overrides``."""
        if name not in PRESETS:
            raise ValueError(f"unknown MQAR preset {name!r}; valid: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def num_jobs(self) -> int:
        return self.jobs or _default_jobs()

    def seed_list(self) -> list[int]:
        return parse_seeds(self.seeds)

    def lrs_of(self, layer: str) -> list[float]:
        """The learning rates ``layer`` is trained at."""
        return list(self.lrs[layer] if isinstance(self.lrs, dict) else self.lrs)

    @classmethod
    def quick_config(cls, **kw) -> "MQARSweep":
        """The smoke run (:meth:`quick`) of ``MQARSweep(**kw)``."""
        return cls(**kw).quick()

    def quick(self) -> "MQARSweep":
        """A smoke-sized copy: first two layers, one width, one lr, one seed, 3 steps."""
        layers = self.layers[:2]
        return dataclasses.replace(self, layers=layers, widths=self.widths[:1],
                                   lrs={n: self.lrs_of(n)[:1] for n in layers} if isinstance(self.lrs, dict)
                                   else self.lrs[:1],
                                   seeds=self.seed_list()[:1], max_steps=3, num_train=256, curve_points=1,
                                   jobs=1)

    def validate(self) -> None:
        _check_layers(self.layers, allow_none=False)
        if not base_recipe("mqar").is_file():
            raise FileNotFoundError(f"base recipe {base_recipe('mqar')} does not exist")
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"widths must be positive ints, got {self.widths}")
        if isinstance(self.lrs, dict):
            missing = [n for n in self.layers if n not in self.lrs]
            if missing:
                raise ValueError(f"per-layer lrs give no learning rate for {missing}; they name "
                                 f"{sorted(self.lrs)} (a list instead applies to every layer)")
        for n in self.layers:
            if not self.lrs_of(n) or min(self.lrs_of(n)) <= 0:
                raise ValueError(f"lrs must be non-empty lists of positive numbers, got {self.lrs}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0 (0 = no checkpoints), got {self.checkpoint_every}")
        if self.jobs < 0:
            raise ValueError(f"jobs must be >= 0 (0 = auto), got {self.jobs}")
        if self.curve_points < 0 or self.curve_batches < 1:
            raise ValueError(f"curve_points must be >= 0 and curve_batches >= 1, got {self.curve_points}, "
                             f"{self.curve_batches}")
        if self.num_layers is not None and self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        self.seed_list()
        for n in self.layers:
            knob_grid(n, self.knobs)
        self.task().validate()  # a bad task fails here, not in every worker process

    def task(self):
        """The MQAR task of every run: the base recipe's, with this sweep's ``seq_len`` / ``num_kv_pairs`` /
        ``vocab_size`` where set (:class:`~seqmix.data.mqar.MQARConfig`)."""
        import yaml

        from seqmix.data.mqar import MQARConfig

        given = yaml.safe_load(base_recipe("mqar").read_text())["data"]["init_args"]
        fields = {f.name for f in dataclasses.fields(MQARConfig)}
        cfg = {k: v for k, v in given.items() if k in fields}
        cfg.update({k: getattr(self, k) for k in ("seq_len", "num_kv_pairs", "vocab_size") if getattr(self, k)})
        return MQARConfig(**cfg)

    def runs(self) -> list[tuple]:
        """Every run of the grid: ``(layer, width, lr, knob setting, seed, sweep)``."""
        return [(n, w, lr, k, s, self) for n in self.layers for w in self.widths for lr in self.lrs_of(n)
                for k in knob_grid(n, self.knobs) for s in self.seed_list()]


def _run_args(layer: str, width: int, lr: float, knobs: dict, seed: int, sweep: MQARSweep) -> list[str]:
    """The recipe arguments of one run (stored with its record; a resumed sweep matches finished runs by them)."""
    return (layer_args("mqar", layer) + knob_args("mqar", layer, knobs) + seed_args(seed)
            + [f"--model.init_args.model.dim={width}", f"--model.init_args.lr={lr}"]
            + ([f"--model.init_args.model.num_layers={sweep.num_layers}"] if sweep.num_layers else [])
            + [f"--data.init_args.{k}={getattr(sweep, k)}" for k in ("num_train", "seq_len", "num_kv_pairs")
               if getattr(sweep, k)]
            + ([f"--data.init_args.vocab_size={sweep.vocab_size}",
                f"--model.init_args.model.vocab_size={sweep.vocab_size}"] if sweep.vocab_size else []))


def _checkpoints(sweep: MQARSweep, layer: str, run_args: list[str]) -> Path:
    """The checkpoint folder of one run: the layer and a digest of its portable recipe arguments (a run is a point
    of the grid: width, lr, knobs, seed)."""
    digest = hashlib.sha1(json.dumps(portable_args(run_args)).encode()).hexdigest()[:12]
    return Path(sweep.out) / "checkpoints" / f"{layer}-{digest}"


def _run_one(layer: str, width: int, lr: float, knobs: dict, seed: int, sweep: MQARSweep) -> dict:
    import torch

    run_args = _run_args(layer, width, lr, knobs, seed, sweep)
    curve = LearningCurve(mqar_accuracy, sweep.curve_points, sweep.curve_batches) if sweep.curve_points else None
    cli, train_s, metrics = _fit_recipe(run_args, [], sweep.max_steps, callbacks=(curve,) if curve else (),
                                        checkpoints=_checkpoints(sweep, layer, run_args),
                                        checkpoint_every=sweep.checkpoint_every, resume=sweep.resume)
    model, dm, trainer = cli.model, cli.datamodule, cli.trainer
    lm = model.lm
    return {
        "layer": layer, "args": run_args, "mixer": "+".join(sorted(set(lm.mixer_names))), "width": width, "lr": lr,
        "knobs": knobs, "seed": seed, "steps": int(trainer.global_step), "train_seconds": train_s,
        "val_acc": metrics["val/acc"], "val_loss": metrics["val/loss"],
        "state_size": lm.state_size(seq_len=dm.cfg.seq_len), "params": sum(p.numel() for p in lm.parameters()),
        "threads": torch.get_num_threads(), "curve": curve.curve if curve else None,
        "task": dataclasses.asdict(dm.cfg),
    }


_METRICS = {"val_acc": lambda r: r["val_acc"], "val_loss": lambda r: r["val_loss"],
            "train_seconds": lambda r: r["train_seconds"]}


def _points(records: list[dict]) -> list[dict]:
    """Per-seed records -> one row per (layer, width, lr, knobs) with mean and interval per metric."""
    rows = aggregate(records, ("layer", "width", "lr", "knobs"), _METRICS)
    for row in rows:
        first = row["records"][0]
        row.update(mixer=first["mixer"], steps=first["steps"], state_size=first["state_size"], params=first["params"],
                   threads=first["threads"], task=first["task"],
                   val_acc=row["summary"]["val_acc"]["mean"], val_loss=row["summary"]["val_loss"]["mean"],
                   train_seconds=row["summary"]["train_seconds"]["mean"],
                   curves=[r["curve"] for r in row["records"] if r.get("curve")])
        del row["records"]
    return rows


def _best(points: list[dict]) -> list[dict]:
    """The point with the highest mean accuracy over seeds per (layer, width)."""
    best: dict[tuple, dict] = {}
    for r in points:
        key = (r["layer"], r["width"])
        if key not in best or r["val_acc"] > best[key]["val_acc"]:
            best[key] = r
    return sorted(best.values(), key=lambda r: (r["mixer"], r["width"]))


def _knob_text(knobs: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(knobs.items())) or "-"


def _markdown(best: list[dict], points: list[dict], sweep: MQARSweep, command: str) -> str:
    task = best[0]["task"] if best else {}
    S = len(sweep.seed_list())
    knobs = parse_knobs(sweep.knobs)
    knob_note = ("" if knobs is None else "; knob grids: " + "; ".join(
        f"{n} {{{', '.join(f'{k}: {list(v)}' for k, v in sorted(_grid_of(n, knobs).items()))}}}"
        for n in sweep.layers if _grid_of(n, knobs)))
    lr_grid = {n: sweep.lrs_of(n) for n in sweep.layers} if isinstance(sweep.lrs, dict) else sweep.lrs
    lines = [
        "# MQAR comparison", "",
        f"Command: `{command}`  ",
        f"Task: T={task.get('seq_len')}, {task.get('num_kv_pairs')} key-value pairs, vocab {task.get('vocab_size')}, "
        f"form {task.get('form')}; widths {sweep.widths}; lr grid {lr_grid}{knob_note}; "
        f"seeds {sweep.seed_list()}; equal steps per run. Shown: per (layer, width) the setting with the highest mean "
        f"accuracy over seeds. Cells: {interval_note(S)}. "
        f"train s = mean wall seconds of one run ({best[0].get('threads', '?') if best else '?'} CPU thread(s) each).",
        "",
        "| layer | width | state size | params | best lr | best knobs | steps | val acc | val loss | train s |",
        "|---|---:|---:|---:|---:|---|---:|---|---:|---:|",
    ]
    for r in best:
        acc = summary_of(r, "val_acc").format()
        lines.append(f"| {r['mixer']} | {r['width']} | {r['state_size']:,} | {r['params']:,} | {r['lr']:g} | "
                     f"{_knob_text(r['knobs'])} | {r['steps']} | {acc} | {r['val_loss']:.3f} | "
                     f"{r['train_seconds']:.0f} |")
    pairs = task.get("num_kv_pairs")
    if pairs and best:
        # the plateau every layer sits on first: one of the values in context, guessed
        chance = 1 / pairs
        stuck = [f"{r['mixer']} (width {r['width']})" for r in best if r["val_acc"] < 2 * chance]
        lines += ["", f"Chance: {chance:.3f} (one of the {pairs} values in context, guessed: the plateau every layer "
                  f"starts on). Left it (best mean accuracy >= {2 * chance:.2f}): "
                  + ("every layer." if not stuck else f"all but {', '.join(stuck)}.")]
    if S >= 2:
        lines += ["", "Separated (intervals of the best settings do not overlap; no statement where they do):", ""]
        for w in sweep.widths:
            at = [r for r in best if r["width"] == w]
            stmts = ranking(at, "val_acc", lambda r: r["mixer"])
            lines.append(f"- width {w}: " + ("; ".join(stmts) if stmts else "no pair separates"))
    if len(points) > len(best):
        lines += ["", "Every setting (mean accuracy over seeds):", "",
                  "| layer | width | lr | knobs | val acc |", "|---|---:|---:|---|---|"]
        for r in sorted(points, key=lambda r: (r["mixer"], r["width"], r["lr"], json.dumps(r["knobs"], sort_keys=True))):
            lines.append(f"| {r['mixer']} | {r['width']} | {r['lr']:g} | {_knob_text(r['knobs'])} | "
                         f"{summary_of(r, 'val_acc').format()} |")
    return "\n".join(lines)


def _grid_of(layer: str, knobs) -> dict:
    from seqmix import layers as L

    return dict(L.mixer_class(layer).Tooling.sweep_knobs) if knobs == "declared" else dict(knobs.get(layer, {}))


def _plot(best: list[dict], path: Path) -> Path | None:
    plt = pyplot(path)
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for mixer in sorted({r["mixer"] for r in best}):
        pts = sorted((r for r in best if r["mixer"] == mixer), key=lambda r: r["state_size"])
        s = [summary_of(r, "val_acc") for r in pts]
        ax.errorbar([max(r["state_size"], 1) for r in pts], [x.mean for x in s],
                    yerr=[[x.mean - x.low for x in s], [x.high - x.mean for x in s]], marker="o", capsize=3,
                    label=mixer)
    ax.set_xscale("log")
    ax.set_xlabel("state size per sequence (elements, log)")
    ax.set_ylabel("MQAR query accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    n = best[0]["n_seeds"] if best else 1
    ax.set_title("MQAR accuracy vs state size (best setting per point" + (f", {interval_note(n)})" if n > 1 else ")"),
                 fontsize=9)
    return save_figure(fig, path)


def run_mqar_sweep(sweep: MQARSweep, progress: bool = True) -> dict:
    """Run the sweep; write ``results.json``, ``results.md``, ``results.png`` (accuracy vs state size with intervals)
    and ``curves.png`` (learning curves of each layer's best setting at the largest width) to ``sweep.out``."""
    sweep.validate()
    command = " ".join(shlex.quote(a) for a in sys.argv)
    runs = sweep.runs()
    records = []
    out = Path(sweep.out)
    out.mkdir(parents=True, exist_ok=True)
    # Every finished run is appended at once, so an interrupted sweep keeps what it trained; the same command again
    # with resume=True trains only the runs missing there (same arguments, steps and curve settings).
    log = RunLog(out)
    kept, runs = log.start(runs, _run_args, lambda rec: (
        (not sweep.max_steps or rec.get("steps") == sweep.max_steps) and curve_matches(rec, sweep.curve_points)),
        sweep.resume)
    records.extend(kept)

    def done(rec: dict) -> None:
        records.append(rec)
        log.append(rec)
        shutil.rmtree(_checkpoints(sweep, rec["layer"], rec["args"]), ignore_errors=True)  # the record is safe now
        logger.info("%s d=%d lr=%g %s seed %d: acc %.3f", rec["layer"], rec["width"], rec["lr"],
                    _knob_text(rec["knobs"]), rec["seed"], rec["val_acc"])

    # widest first: the longest runs start early, so parallel processes finish close together
    runs.sort(key=lambda r: -r[1])
    _map_runs(_run_one, runs, sweep.num_jobs(), lambda r: f"{r[0]} d={r[1]} lr={r[2]:g} s{r[4]}", "mqar", progress,
              done)
    records.sort(key=lambda r: (r["layer"], r["width"], r["lr"], json.dumps(r["knobs"], sort_keys=True), r["seed"]))
    points = _points(records)
    best = _best(points)
    md = _markdown(best, points, sweep, command)
    doc = {"schema": "seqmix.compare.mqar/v2", "command": command, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "sweep": dataclasses.asdict(sweep), "runs": records, "points": points, "best": best}
    (out / "results.json").write_text(json.dumps(doc, indent=1))
    (out / "results.md").write_text(md + "\n")
    png = _plot(best, out / "results.png")
    curves = None
    if sweep.curve_points:
        wmax = max(sweep.widths)
        curves = plot_curves({r["mixer"]: r["curves"] for r in best if r["width"] == wmax}, out / "curves.png",
                             "MQAR query accuracy (fixed validation batches)",
                             f"MQAR learning curves, width {wmax} (best setting per layer)",
                             chance=1 / sweep.task().num_kv_pairs)
    return {"markdown": md, "records": records, "points": points, "best": best,
            "paths": {"json": out / "results.json", "md": out / "results.md", "png": png, "curves": curves}}
