"""What both comparisons share: recipes and per-layer arguments, training one recipe run, running many runs in
parallel processes.

Every run is built from ONE base recipe per task (``recipes/base/<task>.yaml``) plus the layer's name and config:
the documented overrides of ``recipes/<task>/<layer>.yaml`` where that file exists (see :func:`recipe_overrides`),
the layer's defaults otherwise.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import lightning as pl
from tqdm.auto import tqdm

from seqmix.utils.recipes import recipe_dir

logger = logging.getLogger(__name__)

__all__ = ["RunLog", "base_recipe", "layer_args", "longest_first", "recipe_dir", "recipe_overrides", "token_mixers"]


def base_recipe(task: str) -> Path:
    """The base recipe every run of ``task`` (``"mqar"``, ``"t2v"`` or ``"worldmodel"``) starts from."""
    return recipe_dir() / "base" / f"{task}.yaml"


def token_mixers(causal: bool = False) -> list[str]:
    """Every registry layer that mixes tokens of a plain sequence (the default layers of a comparison); with
    ``causal``, only those with a causal form (a language task's default layers)."""
    from seqmix import layers as L

    return [n for n in L.sequence_mixers() if L.mixer_class(n).mixes_tokens
            and (not causal or L.mixer_class(n).can_be_causal())]


def cost_estimate(name: str | None, dim: int = 32, num_heads: int = 2, tokens: int = 600) -> float:
    """Bytes layer ``name``'s cost model moves for ``tokens`` tokens at a small nominal width (CPU training at
    comparison sizes is memory-bound; rankings, not values, are what it is for); 0 for no layer (None or ``"none"``),
    -1 where no estimate can be built. Fields without a default (a frame layer's grid) come from the layer's small
    test configuration."""
    import dataclasses

    from seqmix import layers as L

    if name in (None, "none"):
        return 0.0
    try:
        required = {f.name for f in dataclasses.fields(L.config_class(name))
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        given = {k: v for k, v in L.mixer_class(name).Tooling.small_config.items() if k in required}
        return float(L.build(name, dim=dim, num_heads=num_heads, **given).cost(tokens, 0, 1).bytes)
    except (TypeError, ValueError, KeyError) as e:  # an exotic layer: no estimate
        logger.debug("no cost estimate for %s (%s)", name, e)
        return -1.0


def longest_first(names: list[str | None], dim: int = 32, num_heads: int = 2, tokens: int = 600) -> list[str | None]:
    """``names`` (layers; None or ``"none"``: no global layer) ordered for a process pool, the most expensive
    first (:func:`cost_estimate`), so that a pool does not end with one long run on one core while the others
    idle. A layer without an estimate keeps its place after the estimated ones."""
    cost = {n: cost_estimate(n, dim, num_heads, tokens) for n in dict.fromkeys(names)}
    return sorted(names, key=lambda n: -cost[n])


#: Keys (dotted, under the recipe root) a per-layer recipe may change relative to its task's base recipe.
_LAYER_KEYS = ("model.init_args.model.mixer", "model.init_args.model.mixer_config",
               "model.init_args.model.num_heads", "model.init_args.model.rope", "trainer.default_root_dir")


def _flat(doc: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in doc.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "mixer_config":  # a mixer config is one value
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def recipe_overrides(task: str, recipe: str | Path, keys: tuple[str, ...] = _LAYER_KEYS) -> dict:
    """What ``recipe`` changes relative to ``task``'s base recipe (``recipes/base/<task>.yaml``), as ``{dotted key:
    value}``.

    A per-layer (per-model) recipe must be the base recipe with only ``keys`` changed (default :data:`_LAYER_KEYS`):
    anything else raises, so the base recipe stays the one place that sets what every run shares."""
    import yaml

    base = _flat(yaml.safe_load(base_recipe(task).read_text()))
    doc = _flat(yaml.safe_load(Path(recipe).read_text()))
    missing = sorted(set(base) - set(doc))
    diff = {k: v for k, v in doc.items() if k not in base or base[k] != v}
    extra = sorted(set(diff) - set(keys))
    if missing or extra:
        raise ValueError(f"{recipe}: a {task} recipe must be {base_recipe(task)} with only {', '.join(keys)} "
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


def _check_layers(names: list, allow_none: bool) -> None:
    from seqmix import layers as L

    if not names:
        raise ValueError("no layers given")
    bad = [n for n in names if not ((allow_none and n == "none") or n in L.available())]
    if bad:
        raise ValueError(f"unknown layer(s) {bad}; valid: {', '.join((['none'] if allow_none else []) + L.available())}")


def portable_args(args: list) -> list:
    """Recipe arguments with the built-in recipe folder written ``recipes/...`` (as in the repository), so that a
    run's record names the same recipe in every checkout or installation and resumes there."""
    root = str(recipe_dir()) + os.sep
    return [f"recipes/{a[len(root):]}" if isinstance(a, str) and a.startswith(root) else a for a in args]


class RunLog:
    """A comparison's ``runs.jsonl``: each finished run's record is appended as it completes, so an interrupted
    comparison keeps what it trained, and the same command with ``resume`` trains only the runs missing there.

    A logged record is one of this call's runs when its recipe arguments (``record["args"]``) are one of the wanted
    argument lists and ``same(record)`` holds (steps, curve settings, ...). Not matched: the code, so resume only
    with the same checkout (or one whose changes do not touch the kept runs)."""

    def __init__(self, out: str | Path):
        self.path = Path(out) / "runs.jsonl"

    def start(self, runs: list[tuple], args_of, same, resume: bool) -> tuple[list[dict], list[tuple]]:
        """``(kept records, runs still to train)``: with ``resume`` the logged records of ``runs`` (each run's
        recipe arguments are ``args_of(*run)``; each run kept at most once), else none. With ``resume`` the log
        keeps every record it holds - runs of other layers or settings stay for the calls that want them (a call
        over some of a study's layers must not drop the others'); only a line cut by an interruption goes. Without
        ``resume`` it starts empty. Later runs are appended with :meth:`append`."""
        keys = [json.dumps(portable_args(args_of(*r))) for r in runs]
        logged = self._records() if resume else []
        kept = self._finished(logged, set(keys), same)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(json.dumps(r) + "\n" for r in logged))
        if kept:
            logger.info("resuming: %d of %d runs already in %s", len(kept), len(runs), self.path)
        done = {json.dumps(portable_args(r["args"])) for r in kept}
        return kept, [r for r, k in zip(runs, keys) if k not in done]

    def _records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by the interruption
                continue
        return out

    @staticmethod
    def _finished(records: list[dict], wanted: set[str], same) -> list[dict]:
        kept, seen = [], set()
        for rec in records:
            key = json.dumps(portable_args(rec.get("args") or []))
            if key in wanted and key not in seen and same(rec):
                kept.append(rec)
                seen.add(key)
        return kept

    def append(self, rec: dict) -> None:
        if isinstance(rec.get("args"), list):
            rec = {**rec, "args": portable_args(rec["args"])}
        with self.path.open("a") as f:
            f.write(json.dumps(rec, default=str) + "\n")


def curve_matches(rec: dict, curve_points: int) -> bool:
    """Whether a logged run record has the learning curve ``curve_points`` asks for (none for 0)."""
    if not curve_points:
        return rec.get("curve") is None
    return len((rec.get("curve") or {}).get("steps", [])) == curve_points + 1


class TrainClock(pl.Callback):
    """Wall seconds of training (``seconds``), carried in the run's checkpoints so that a resumed run reports the
    time of all its segments, not only the last one."""

    def __init__(self):
        self.before = 0.0  # seconds of earlier segments (restored from a checkpoint)
        self._t0: float | None = None

    @property
    def seconds(self) -> float:
        return self.before + (time.perf_counter() - self._t0 if self._t0 is not None else 0.0)

    def on_train_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        self.before, self._t0 = self.seconds, None

    def state_dict(self) -> dict:
        return {"seconds": self.seconds}

    def load_state_dict(self, state: dict) -> None:
        self.before = float(state["seconds"])


def _fit_recipe(recipe_args: list[str], overrides: list[str], max_steps: int | None, callbacks: tuple = (),
                checkpoints: Path | None = None, checkpoint_every: int = 0, resume: bool = False):
    """Train one run (``--config`` arguments + overrides) through the same LightningCLI path as ``seqmix fit``, with
    ``callbacks`` added to the recipe's; returns (cli, train seconds, validation metrics).

    With ``checkpoints`` (a folder of its own for this run) the run saves ``last.ckpt`` there every
    ``checkpoint_every`` steps (atomically, like ``seqmix fit``); with ``resume`` and a ``last.ckpt`` there it
    continues from it (exactly: model, optimizer, data order, the callbacks' state), else it starts afresh and
    clears the folder. The caller removes the folder once the run's record is safe."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from seqmix.lightning_cli import run_lightning

    keep = checkpoints is not None and checkpoint_every > 0
    args = [*recipe_args, *overrides,
            "--trainer.logger=false", f"--trainer.enable_checkpointing={'true' if keep else 'false'}",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    if max_steps:
        args.append(f"--trainer.max_steps={max_steps}")
    cli = run_lightning(args, run=False)
    clock = TrainClock()
    ckpt_path = None
    if keep:
        last = Path(checkpoints) / "last.ckpt"
        if resume and last.is_file():
            ckpt_path = str(last)
            logger.info("resuming %s from %s", " ".join(portable_args(recipe_args)), last)
        elif Path(checkpoints).exists():
            shutil.rmtree(checkpoints)
        # the recipe's own checkpoint callback (under its default_root_dir) is replaced by the run's folder
        cli.trainer.callbacks[:] = [c for c in cli.trainer.callbacks if not isinstance(c, ModelCheckpoint)]
        cli.trainer.callbacks.append(ModelCheckpoint(
            dirpath=checkpoints, save_last=True, save_top_k=0, every_n_train_steps=checkpoint_every,
            enable_version_counter=False))
    cli.trainer.callbacks.extend([*callbacks, clock])
    with warnings.catch_warnings():
        # a Lightning-internal deprecation notice (its own pytree helper), printed once per run otherwise
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
        cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=ckpt_path)
        (metrics,) = cli.trainer.validate(cli.model, cli.datamodule, verbose=False)
    return cli, clock.seconds, {k: float(v) for k, v in metrics.items()}


def _default_jobs() -> int:
    """One process per CPU core without a GPU (small models use two single-threaded processes better than one
    two-threaded one: ~1.3x the throughput on a 2-core CPU), else 1."""
    import torch

    return 1 if torch.cuda.is_available() else max(1, os.cpu_count() or 1)


def _exit_with_parent(parent: int) -> None:
    """Pool-worker initializer: end this worker when the process that started it is gone (killed, even with
    SIGKILL), instead of training on as an orphan. Runs checkpoint atomically, so stopping mid-run loses at most
    the steps since the last checkpoint."""
    import threading

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


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
        pool = ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=_exit_with_parent,
                                   initargs=(os.getpid(),))
        try:
            with _sigterm_raises():
                futures = {pool.submit(_in_worker, fn, run, threads): run for run in runs}
                for fut in as_completed(futures):
                    on_done(fut.result())
                    bar.set_postfix_str(label(futures[fut]))
                    bar.update()
        except BaseException:
            # stopped (SIGTERM, Ctrl-C) or a run failed: end the other runs now rather than wait for them to finish
            # (hours); the executor has no public way to stop a running task before Python 3.14
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                proc.kill()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    bar.close()


class _sigterm_raises:
    """Within the block, SIGTERM raises SystemExit in the main thread (so cleanup runs) instead of ending the
    process at once; a no-op off the main thread."""

    def __enter__(self):
        import signal
        import threading

        self.old = None
        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGTERM, self._raise)

    @staticmethod
    def _raise(signum, frame):
        raise SystemExit(128 + signum)

    def __exit__(self, *exc):
        import signal

        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)


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
