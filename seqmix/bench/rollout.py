"""World-model rollout benchmark (``seqmix bench rollout``): per-frame time and peak memory over a long
autoregressive rollout (the paper's inference-cost plots, Po et al. 2025, arXiv 2505.20171, in kind).

Each model is a :class:`~seqmix.backbones.worldmodel.WorldModel` of the same size built from one of the world models
marked for it in :data:`~seqmix.backbones.wm_config.WORLD_MODELS`: ``blockwise_ssm`` (the paper's model: blockwise_ssm
-> frame_local_attn), ``blockwise_ttt`` (-> frame_local_attn), ``frame_local_attn`` only and ``causal_transformer``
(full_attn, causal: full context). Registry
names come from the stacks, so a model whose layers are not registered in this build is recorded as skipped with
the reason. One timed unit is one generated frame: ``num_steps`` DDIM denoiser calls with the state fixed plus the
commit of the clean frame (:func:`seqmix.backbones.wm_rollout.generate_chunk`); a stack that steps by chunks of
``c`` frames (chunked frame-local attention) generates a chunk at a time, each frame charged ``1 / c`` of it. The
models are rolled out one after another (``interleave=True``: frame by frame across models, which spreads load from
other processes evenly but lets a growing model slow the others through the caches); each frame's thread CPU time
is kept next to its wall-clock time.

Memory per frame (every ``memory_every`` frames): CPU: bytes of the carried state before the frame + the peak of
the tensors created while generating it (:class:`seqmix.utils.memory.TensorMemoryTracker`); CUDA: peak allocated
during the frame minus the parameters. Records: one per model and window of ``window`` frames (mode
``decode-frame``, ``T`` = tokens before the window); the summary holds every frame's time and every memory sample,
and the last-window / first-window ratios (the acceptance: <= 1.15 for the constant-state models).

``stand_ins`` (smoke runs only): replace a registry name that is not available by an existing layer (e.g.
``frame_local_attn`` -> ``swa`` over the same number of frames); such results are labelled as stand-ins everywhere
and do not go to ``benchmarks/results``.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from seqmix import layers as L
from seqmix.backbones.worldmodel import WorldModel, WorldModelConfig, state_nbytes, world_model, world_model_names
from seqmix.backbones.wm_rollout import generate_chunk
from seqmix.diffusion import VDiffusion
from seqmix.utils.plots import pyplot, save_figure

from .core import Measurement, _tracked_call, torch_threads
from .gates import gate
from .report import RunInfo, make_doc, markdown_header, start_run, write_doc

logger = logging.getLogger(__name__)

__all__ = ["RolloutBenchConfig", "RolloutBenchResult", "run_rollout_bench", "markdown_table", "plot",
           "write_report", "summarize"]

_GATES = ["tests/test_worldmodel.py::test_rollout_equals_teacher_forced_pass_fp64",
          "tests/test_worldmodel.py::test_sample_commits_each_frame_clean_into_the_state",
          "tests/test_worldmodel.py::test_carried_state_is_constant_for_fixed_state_mixers_and_grows_for_full_attention"]


@dataclass(kw_only=True)
class RolloutBenchConfig:
    """What to measure.

    Attributes:
        models: world model names (default: those of :data:`~seqmix.backbones.wm_config.WORLD_MODELS` marked for
            the rollout benchmark; the constant-state ones must keep their last/first ratios <= 1.15).
        frames: frames generated per model (after ``warmup_frames`` untimed ones on a throwaway state).
        size: :class:`WorldModelConfig` preset (``cpu-small``: width 64, 2 layers, 4 x 4 latent grid).
        model_overrides: other :class:`WorldModelConfig` fields for every model (``dim``, ``depth``, ``grid``,
            ``window_frames``, ``chunk_frames``, ``blocks``, ...).
        mixer_configs: per registry name config overrides, e.g. ``{"blockwise_ssm": {"d_state": 16}}``.
        warmup_frames: untimed frames generated first, on a throwaway state (lazy initialisation).
        num_actions: discrete actions (Memory Maze: 6); random actions drive the rollout.
        num_steps: DDIM steps per frame.
        window: frames per record; the first and last windows give the ratios.
        memory_every: take the peak memory every this many frames.
        stand_ins: ``{missing registry name: existing name}`` for smoke runs (see the module docstring).
        interleave: roll the models out interleaved, frame by frame (load from other processes then falls on all of
            them at the same frame index), instead of one after another (default). Interleaving on one core lets a
            model whose state grows (full-context attention: a KV cache of megabytes) evict the caches of the
            others, so their later frames look slower: measured 1.4-1.5x last/first time ratios for the
            constant-state models next to the full-context Transformer, 0.95-0.96 without it.
        batch: sequences rolled out together.
        seed: seed of the weights and the random actions.
        device, dtype: where and in what precision to run (``cpu``, ``cuda``; ``float32``, ``bfloat16``, ...).
        threads: torch CPU threads (1 gives steadier timings on a shared machine; None: torch's default).
        quick: a smoke run: tiny model, a few frames, numbers not meaningful.
        notes: free-text caveats stored with the results.
    """

    models: list[str] = field(default_factory=lambda: world_model_names(rollout=True))
    frames: int = 1000
    size: str = "cpu-small"
    model_overrides: dict = field(default_factory=dict)
    mixer_configs: dict[str, dict] = field(default_factory=dict)
    num_actions: int = 6
    num_steps: int = 4
    window: int = 100
    memory_every: int = 10
    warmup_frames: int = 3
    stand_ins: dict[str, str] = field(default_factory=dict)
    interleave: bool = False
    batch: int = 1
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    threads: int | None = 1
    quick: bool = False
    notes: list[str] = field(default_factory=list)

    @classmethod
    def quick_config(cls, **kw) -> "RolloutBenchConfig":
        """A seconds-long smoke run: the tiny preset, 6 frames, windows of 2 frames, one DDIM step."""
        base = dict(size="tiny", frames=6, window=2, memory_every=2, num_steps=1, warmup_frames=1, quick=True)
        return cls(**{**base, **kw})

    def __post_init__(self) -> None:
        for m in self.models:
            world_model(m)  # an unknown or former name: one error naming the valid ones
        for name in ("frames", "window", "memory_every", "num_steps", "batch"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.window > self.frames:
            raise ValueError(f"window={self.window} frames is longer than the rollout ({self.frames} frames)")
        if not isinstance(getattr(torch, self.dtype, None), torch.dtype):
            raise ValueError(f"unknown dtype {self.dtype!r} (use e.g. float32, bfloat16)")


@dataclass
class RolloutBenchResult:
    records: list[Measurement]
    traces: dict[str, dict]
    config: RolloutBenchConfig
    run: RunInfo
    notes: list[str]


def _stand_in(cfg: dict, sub: str, tokens_per_frame: int, window_frames: int) -> tuple[str, dict]:
    """Config of stand-in ``sub``: blocks and grid are dropped; frame windows become token windows (a token of frame
    i sees frames i-k..i: the last (k + 1) frames' tokens); TTT stand-ins take their small config."""
    cfg = {k: v for k, v in cfg.items() if k not in ("block", "grid", "window_frames", "chunk_frames")}
    if sub in ("ttt_mlp", "ttt_linear"):
        cfg = {**L.mixer_class(sub).Tooling.small_config, **cfg}
    if "window" in {f.name for f in dataclasses.fields(L.config_class(sub))} and "window" not in cfg:
        cfg["window"] = (window_frames + 1) * tokens_per_frame
    return sub, cfg


def model_config(cfg: RolloutBenchConfig, model: str) -> tuple[WorldModelConfig | None, str | None, dict]:
    """``(config, reason it cannot be built here or None, {replaced name: stand-in})`` of one benchmark model."""
    base = WorldModelConfig.preset(cfg.size, mixers=model, action_kind="discrete",
                                   num_actions=cfg.num_actions, **cfg.model_overrides)
    used: dict[str, str] = {}
    stack = []
    for layer in base.mixers:
        specs = []
        for name, mcfg in layer:
            mcfg = {**mcfg, **cfg.mixer_configs.get(name, {})}
            if name not in L.available() and name in cfg.stand_ins:
                used[name] = cfg.stand_ins[name]
                specs.append(_stand_in(mcfg, used[name], base.tokens_per_frame,
                                       mcfg.get("window_frames", base.window_frames)))
            else:
                specs.append((name, mcfg))
        stack.append(specs)
    missing = sorted({n for layer in stack for n, _ in layer if n not in L.available()})
    if missing:
        return None, (f"mixer(s) {missing} not registered in this build (available: {', '.join(L.available())})"), used
    return dataclasses.replace(base, mixers=stack), None, used


def run_rollout_bench(cfg: RolloutBenchConfig, progress: bool = True, command: str | None = None
                      ) -> RolloutBenchResult:
    """Roll out every model for ``cfg.frames`` frames; one record per model and window (skips included)."""
    with torch_threads(cfg.threads):
        return _run(cfg, progress, command)


def _frame_memory(model: WorldModel, state, acts, cfg: RolloutBenchConfig, diffusion, device) -> int | None:
    """Peak memory of generating the frames of ``acts`` (one causal step) from ``state`` (the result is discarded)."""
    g = torch.Generator(device=device).manual_seed(cfg.seed + 1)

    def call():
        generate_chunk(model, state, acts, frames=acts.shape[1], num_steps=cfg.num_steps, diffusion=diffusion,
                       generator=g)

    if device.type == "cuda":
        params = sum(p.numel() * p.element_size() for p in model.parameters())
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        call()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - params)
    peak = _tracked_call(call)
    if peak is None:
        # SDPA's CausalBias (attention with a KV cache) cannot be created under the tensor accounting: measure this
        # call with the attention layers on their naive twin (the same math with an explicit mask, as SDPA's CPU
        # path computes it).
        attn = [m for layer in model.layers for m in layer.mixers if {"sdpa", "naive"} <= set(m.backends)]
        saved = [m.config.backend for m in attn]
        try:
            for m in attn:
                m.config.backend = "naive"
            peak = _tracked_call(call)
        finally:
            for m, b in zip(attn, saved):
                m.config.backend = b
    return None if peak is None else state_nbytes(state.mixers) + peak


@dataclass
class _Rollout:
    """One model being rolled out: its state and everything measured so far."""

    label: str
    name: str
    model: WorldModel
    info: dict
    gates: list[str]
    state: object = None
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)
    mem_frames: list[int] = field(default_factory=list)
    peaks: list[int | None] = field(default_factory=list)
    state_bytes: list[int] = field(default_factory=list)
    error: str | None = None


def _frame(r: _Rollout, f: int, acts: torch.Tensor, cfg: RolloutBenchConfig, diffusion, device, g) -> None:
    """Generate frame ``f`` of rollout ``r`` (memory first when sampled), timing wall-clock and thread CPU time.

    A model whose stack steps by chunks of ``c = model.step_frames`` frames (chunked frame-local attention) generates
    and commits a whole chunk at frame ``f = 0, c, 2c, ...``; each frame of it is charged ``1 / c`` of the chunk."""
    c = r.model.step_frames
    if f % c:
        r.times.append(r.times[-1])
        r.cpu_times.append(r.cpu_times[-1])
        return
    a = acts[:, cfg.warmup_frames + f:cfg.warmup_frames + f + c]
    if f % cfg.memory_every < c or f + c >= cfg.frames:
        r.mem_frames.append(f)
        r.peaks.append(_frame_memory(r.model, r.state, a, cfg, diffusion, device))
        r.state_bytes.append(state_nbytes(r.state.mixers))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0, c0 = time.perf_counter(), time.thread_time()
    _, r.state = generate_chunk(r.model, r.state, a, frames=c, num_steps=cfg.num_steps, diffusion=diffusion,
                                generator=g)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    r.times.append((time.perf_counter() - t0) / c)
    r.cpu_times.append((time.thread_time() - c0) / c)


def _run(cfg: RolloutBenchConfig, progress: bool, command: str | None) -> RolloutBenchResult:
    run = start_run(cfg.device, command)
    device = torch.device(cfg.device)
    dtype = getattr(torch, cfg.dtype)
    diffusion = VDiffusion().to(device)
    mem_method = "cuda-max-allocated" if device.type == "cuda" else "tensor-accounting"
    notes = list(cfg.notes)
    if cfg.stand_ins:
        notes.append(f"STAND-INS {cfg.stand_ins}: layers replaced by existing ones where missing; not the real "
                     "layers' numbers")
    if cfg.interleave:
        notes.append("models are rolled out interleaved, frame by frame (frame f of every model, then frame f + 1), "
                     "so load from other processes falls on all of them at the same frame index (and a model with a "
                     "growing state slows the others' later frames through the caches)")
    else:
        notes.append("models are rolled out one after another, each alone on its thread")
    notes.append("summary also holds the thread CPU time per frame (less sensitive to load than wall-clock)")
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    acts = torch.randint(0, cfg.num_actions, (cfg.batch, cfg.frames + cfg.warmup_frames), generator=g,
                         device=device)
    records: list[Measurement] = []
    traces: dict[str, dict] = {}
    rollouts: list[_Rollout] = []
    bases: dict[str, dict] = {}
    for model_name in cfg.models:
        wcfg, why, used = model_config(cfg, model_name)
        label = model_name + (" (stand-in)" if used else "")
        bases[label] = dict(suite="rollout", name=label, mode="decode-frame", batch=cfg.batch, backend="auto",
                            dtype=cfg.dtype, device=str(device), memory_method=mem_method, unit="frame")
        if wcfg is None:
            logger.info("rollout %s: skipped (%s)", model_name, why)
            records.append(Measurement(T=1, median_s=None, tokens_per_s=None, peak_bytes=None, status="skipped",
                                       reason=why, gate=list(_GATES), extra={"model": model_name,
                                                                            "stack": model_name},
                                       **bases[label]))
            traces[label] = {"status": "skipped", "reason": why}
            continue
        torch.manual_seed(cfg.seed)
        model = WorldModel(wcfg).to(device=device, dtype=dtype).eval()
        names = wcfg.mixer_names()
        gates = list(dict.fromkeys(_GATES + [x for n in names for x in gate("layers", n, mode="decode-frame")]))
        H, W = wcfg.grid[0] * wcfg.patch_size, wcfg.grid[1] * wcfg.patch_size
        info = {"model": model_name, "stack": model_name,
                "mixers": [[n for n, _ in layer] for layer in wcfg.mixers],
                "mixer_configs": [[c for _, c in layer] for layer in wcfg.mixers], "stand_ins": used,
                "params": model.num_params(), "width": wcfg.dim, "depth": wcfg.depth, "grid": list(wcfg.grid),
                "tokens_per_frame": wcfg.tokens_per_frame, "latent": [wcfg.channels, H, W],
                "num_steps": cfg.num_steps, "calls_per_frame": cfg.num_steps + 1}
        rollouts.append(_Rollout(label, model_name, model, info, gates))

    def guarded(r: _Rollout, fn) -> None:
        if r.error is not None:
            return
        try:
            fn()
        except Exception as e:  # recorded; the other models go on
            r.error = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
            logger.warning("rollout %s failed: %s", r.label, r.error)

    def warm(r: _Rollout) -> None:  # untimed warm-up on a throwaway state (lazy initialisation, allocator)
        st, c = r.model.init_state(cfg.batch), r.model.step_frames
        if cfg.frames % c:
            raise ValueError(f"frames={cfg.frames} is not a multiple of the stack's step of {c} frames")
        for f in range(0, max(cfg.warmup_frames, 1), c):
            _, st = generate_chunk(r.model, st, acts[:, f:f + c], frames=c, num_steps=cfg.num_steps,
                                   diffusion=diffusion, generator=g)
        r.state = r.model.init_state(cfg.batch)

    for r in rollouts:
        guarded(r, lambda r=r: warm(r))
    groups = [rollouts] if cfg.interleave else [[r] for r in rollouts]
    for group in groups:
        desc = "rollout" if cfg.interleave else f"rollout {group[0].label}"
        for f in tqdm(range(cfg.frames), desc=desc, disable=not progress or not group, file=sys.stderr):
            for r in group:
                guarded(r, lambda r=r: _frame(r, f, acts, cfg, diffusion, device, g))

    for r in rollouts:
        base = bases[r.label]
        if r.error is not None:
            records.append(Measurement(T=1, median_s=None, tokens_per_s=None, peak_bytes=None, status="error",
                                       reason=r.error, gate=r.gates, extra=dict(r.info), **base))
            traces[r.label] = {"status": "error", "reason": r.error}
            continue
        N = r.info["tokens_per_frame"]
        for w0 in range(0, cfg.frames, cfg.window):
            w1 = min(w0 + cfg.window, cfg.frames)
            ts = r.times[w0:w1]
            wp = [p for fr, p in zip(r.mem_frames, r.peaks) if w0 <= fr < w1 and p is not None]
            sb = [b for fr, b in zip(r.mem_frames, r.state_bytes) if w0 <= fr < w1]
            med = statistics.median(ts)
            records.append(Measurement(
                T=max(1, w0 * N), tokens_per_unit=N, times_s=ts, median_s=med, tokens_per_s=cfg.batch * N / med,
                peak_bytes=max(wp) if wp else None, gate=r.gates,
                extra={**r.info, "frame_start": w0, "frame_end": w1, "state_bytes": max(sb) if sb else None,
                       "median_cpu_s": statistics.median(r.cpu_times[w0:w1]),
                       "memory_frames": [fr for fr in r.mem_frames if w0 <= fr < w1],
                       **({} if wp else {"memory_note": "tensor accounting could not follow this call"})},
                **base))
        traces[r.label] = {"status": "ok", "frame_s": r.times, "frame_cpu_s": r.cpu_times,
                           "memory_frames": r.mem_frames, "peak_bytes": r.peaks, "state_bytes": r.state_bytes,
                           "params": r.info["params"], "mixers": r.info["mixers"], "stand_ins": r.info["stand_ins"]}
    order = {m: i for i, m in enumerate(cfg.models)}
    records.sort(key=lambda m: order[m.extra["model"]])  # stable: windows stay in frame order
    traces = {k: traces[k] for k in sorted(traces, key=lambda k: order[k.split(" ")[0]])}
    return RolloutBenchResult(records, traces, cfg, run, notes)


def _ratio(a, b):
    return None if not a or b is None else b / a


def summarize(res: RolloutBenchResult) -> dict:
    """Per model: first-window and last-window median per-frame time and peak memory, their ratios, the carried
    state at the start and end, and every frame's time / every memory sample (for plots)."""
    w = res.config.window
    out = {}
    for label, tr in res.traces.items():
        if tr["status"] != "ok":
            out[label] = {"status": tr["status"], "reason": tr["reason"]}
            continue
        ts = tr["frame_s"]
        first_t, last_t = statistics.median(ts[:w]), statistics.median(ts[-w:])
        cs = tr["frame_cpu_s"]
        first_c, last_c = statistics.median(cs[:w]), statistics.median(cs[-w:])
        mf, pk = tr["memory_frames"], tr["peak_bytes"]
        n = len(ts)
        first_m = [p for f, p in zip(mf, pk) if f < w and p is not None]
        last_m = [p for f, p in zip(mf, pk) if f >= n - w and p is not None]
        fm, lm = (max(first_m) if first_m else None), (max(last_m) if last_m else None)
        out[label] = {"status": "ok", "params": tr["params"], "mixers": tr["mixers"], "stand_ins": tr["stand_ins"],
                      "frames": n, "first_frame_s": first_t, "last_frame_s": last_t,
                      "time_ratio": _ratio(first_t, last_t), "first_frame_cpu_s": first_c,
                      "last_frame_cpu_s": last_c, "cpu_time_ratio": _ratio(first_c, last_c), "first_peak_bytes": fm, "last_peak_bytes": lm,
                      "memory_ratio": _ratio(fm, lm),
                      "first_state_bytes": max(b for f, b in zip(mf, tr["state_bytes"]) if f < w),
                      "last_state_bytes": max(b for f, b in zip(mf, tr["state_bytes"]) if f >= n - w), "frame_s": ts, "memory_frames": mf,
                      "peak_bytes": pk, "state_bytes": tr["state_bytes"],
                      "frame_cpu_s": cs}
    return {"window": w, "models": out, "criterion": "last/first window ratio <= 1.15 (time and memory) for the "
            f"constant-state models {world_model_names(rollout=True, constant_state=True)}; growing for the others"}


def _f(x, fmt: str) -> str:
    return "" if x is None else format(x, fmt)


def markdown_table(res: RolloutBenchResult) -> str:
    s = summarize(res)
    w = s["window"]
    lines = [f"| model | mixers (per layer) | params | frames | first-{w} ms/frame | last-{w} ms/frame | time ratio | "
             "CPU-time ratio | "
             f"first-{w} peak MiB | last-{w} peak MiB | memory ratio | state KiB (first-{w} -> last-{w}) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    bad = []
    for label, r in s["models"].items():
        if r["status"] != "ok":
            bad.append((label, r))
            continue
        mix = " + ".join(dict.fromkeys(" -> ".join(layer) for layer in r["mixers"]))
        lines.append(
            f"| {label} | {mix} | {r['params']:,} | {r['frames']} | {1e3 * r['first_frame_s']:.2f} | "
            f"{1e3 * r['last_frame_s']:.2f} | {_f(r['time_ratio'], '.2f')} | {_f(r['cpu_time_ratio'], '.2f')} | "
            f"{_f(r['first_peak_bytes'] and r['first_peak_bytes'] / 2**20, '.3f')} | "
            f"{_f(r['last_peak_bytes'] and r['last_peak_bytes'] / 2**20, '.3f')} | {_f(r['memory_ratio'], '.2f')} | "
            f"{r['first_state_bytes'] / 1024:.1f} -> {r['last_state_bytes'] / 1024:.1f} |")
    if bad:
        lines += ["", "## Not measured", "", "| model | status | reason |", "|---|---|---|"]
        lines += [f"| {label} | {r['status']} | {r['reason']} |" for label, r in bad]
    lines += ["", f"Ratios: median per-frame time (wall-clock; CPU-time: this thread's CPU time) and max sampled peak "
              f"memory of the last {w} frames over the first {w}. Criterion: {s['criterion']}."]
    return "\n".join(lines)


def plot(res: RolloutBenchResult, path: Path, title: str = "") -> Path | None:
    """Per-frame time (raw, light; rolling median of 25 frames, solid) and peak memory vs frame index."""
    plt = pyplot(path)
    if plt is None:
        return None
    s = summarize(res)["models"]
    ok = {k: r for k, r in s.items() if r["status"] == "ok"}
    if not ok:
        return None
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(13, 4.6))
    cmap = plt.get_cmap("tab10")
    for i, (label, r) in enumerate(ok.items()):
        ts = [1e3 * t for t in r["frame_s"]]
        k = min(25, len(ts))
        roll = [statistics.median(ts[max(0, j - k + 1):j + 1]) for j in range(len(ts))]
        ax_t.plot(range(len(ts)), ts, color=cmap(i % 10), alpha=0.2, lw=0.6)
        ax_t.plot(range(len(ts)), roll, color=cmap(i % 10), lw=1.6, label=label)
        cs = [1e3 * t for t in r["frame_cpu_s"]]
        ax_t.plot(range(len(cs)), [statistics.median(cs[max(0, j - k + 1):j + 1]) for j in range(len(cs))],
                  color=cmap(i % 10), lw=1.0, ls="--", label=f"{label} (CPU time)")
        pts = [(f, p / 2**20) for f, p in zip(r["memory_frames"], r["peak_bytes"]) if p is not None]
        if pts:
            ax_m.plot(*zip(*pts), color=cmap(i % 10), lw=1.6, marker=".", ms=3, label=label)
    ax_t.set_xlabel("frame index")
    ax_t.set_ylabel("ms per generated frame")
    ax_t.set_title("per-frame time (rolling median of 25 frames; dashed: CPU time)")
    ax_m.set_xlabel("frame index")
    ax_m.set_ylabel("peak memory per frame (MiB): carried state + transients")
    ax_m.set_title("per-frame peak memory")
    for ax in (ax_t, ax_m):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path, title=title, dpi=110)


def write_report(res: RolloutBenchResult, out_dir: str | Path) -> dict:
    cfg = res.config
    gates = {m.name: m.gate for m in res.records}
    doc = make_doc("rollout", res.run, cfg, res.records, summarize(res), None, gates, res.notes)
    over = f", overrides {cfg.model_overrides}" if cfg.model_overrides else ""
    sizes = (f"WorldModel preset `{cfg.size}`{over}, batch {cfg.batch}, {cfg.dtype}; {cfg.frames} frames per model "
             f"(after {cfg.warmup_frames} untimed), one frame = {cfg.num_steps} DDIM denoiser calls with the state "
             f"fixed + 1 commit; peak memory every {cfg.memory_every} frames"
             + (" -- QUICK SMOKE RUN, numbers not meaningful" if cfg.quick else "") + ".\n\n")
    md = markdown_header("World-model rollout: per-frame time and memory", doc) + sizes + markdown_table(res) + "\n"
    dev = res.run.machine.get("gpu") or res.run.machine.get("cpu_model")
    paths = write_doc(doc, out_dir, md, lambda p: plot(res, p, f"WorldModel rollout ({cfg.size}, {dev})"))
    paths["doc"] = doc
    return paths
