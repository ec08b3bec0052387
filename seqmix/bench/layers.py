"""Layer benchmark: every registry layer and backend, against sequence length, in four modes.

Modes (per sequence of the batch):

* ``fwd``: one forward over T tokens without autograd (inference of a non-causal / video layer);
* ``fwd+bwd``: forward + backward of ``mean(y^2)`` over T tokens (training);
* ``decode`` (causal layers; TTT and attention are built with ``causal=True``): after a prefill of T tokens that
  returns the carried state, ``decode_steps`` calls of ONE token each, carrying the state: time per token;
* ``decode-frame``: the same with calls of ``frame_tokens`` tokens (one video frame per call): time per frame.

Every point reports the median time after warm-up, tokens/s, peak memory (CPU: live-tensor accounting during the
first warm-up call; GPU: ``max_memory_allocated``), the analytic FLOPs and bytes of :mod:`seqmix.bench.costs`, and
the achieved fraction of the matmul peak and copy bandwidth measured in the same run (:func:`measure_peaks`).
Backends run side by side in the same run (e.g. Gated DeltaNet on fla vs torch, Mamba2 on mamba-ssm / fla vs
torch, attention on flash-attn / flex / sdpa). On CPU only the PyTorch paths (``torch``, ``sdpa``) are timed: the
Triton paths there run only under the Triton interpreter, far too slow to time; they are recorded as skipped with
the reason. Points that would exceed the time or memory budget (predicted from the previous length and the cost
model) or that run out of memory are recorded as skipped, and so are the longer lengths of that series.

The report gives, per layer / backend / mode, the growth exponent of time in T (least-squares slope on log-log over
the ``fit_points`` longest measured lengths) next to the cost model's exponent: ~1 for TTT, Mamba2, Gated DeltaNet,
SWA and local attention (T >> window); ~2 for full attention; decode: ~0 for fixed-state layers, ~1 for full
attention's growing KV cache.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from seqmix import layers as L
from seqmix.utils.plots import pyplot, save_figure

from . import costs
from .core import Measurement, fit_exponent, median, torch_threads
from .driver import SIZES, BenchConfig, PointLoop, machine_notes, mixer_bench_config
from .gates import gate
from .report import RunInfo, make_doc, markdown_header, write_doc

logger = logging.getLogger(__name__)

__all__ = ["LayerBenchConfig", "LayerBenchResult", "run_layer_bench", "summarize", "markdown_table",
           "write_report", "MODES"]

MODES = ("fwd", "fwd+bwd", "decode", "decode-frame")
#: Backends that are plain PyTorch and can be timed on CPU; every other backend is a Triton / CUDA path.
CPU_TIMEABLE = ("torch", "sdpa", "naive")


@dataclass(kw_only=True)
class LayerBenchConfig(BenchConfig):
    """What to measure. Defaults: the CPU suite (width 256, T up to 16k, fp32); :meth:`gpu` gives the paper-scale
    GPU suite, :meth:`quick` a CI smoke run. Shared fields (batch, repeats, budgets, device, dtype, threads, peaks,
    quick, notes): :class:`~seqmix.bench.driver.BenchConfig`.

    Attributes:
        layers: registry names (default: every registered layer).
        lengths: sequence lengths T (decode modes: context lengths).
        dim, heads: model width and heads used for every layer.
        modes: any of ``fwd``, ``fwd+bwd``, ``decode``, ``decode-frame``.
        backends: ``["all"]`` every non-reference backend of a layer; ``["auto"]`` only the automatic choice;
            ``["reference"]`` adds the reference twins (``naive``); any other entry is a backend name, used where
            a layer has it. Backends that cannot run here are recorded as skipped with the reason.
        decode_steps: timed one-token steps per decode call.
        decode_frames: timed one-frame steps per decode-frame call.
        frame_tokens: tokens per decode-frame step (CUDA: 1350, one CogVideoX latent frame).
        fit_points: longest measured lengths used for the growth-exponent fit.
        layer_sizes: each layer's sizes: ``bench`` (its class's ``bench_config``: e.g. windows scaled to the CPU
            lengths), ``quick`` (``bench_quick_config``) or ``defaults`` (its config defaults, the paper's sizes).
        layer_configs: per-layer config overrides on top of ``layer_sizes``, e.g.
            ``{"ttt_mlp": {"mini_batch_size": 16}}``.
        compile: time ``torch.compile(layer, dynamic=False)`` instead of the eager layer; every point records the
            seconds of its first (compiling) call as ``compile_seconds`` (one compilation per length and mode).
    """

    layers: list[str] | None = None
    lengths: list[int] = field(default_factory=lambda: [512, 1024, 2048, 4096, 8192, 16384])
    dim: int = 256
    heads: int = 4
    modes: list[str] = field(default_factory=lambda: list(MODES))
    backends: list[str] = field(default_factory=lambda: ["all"])
    decode_steps: int = 8
    decode_frames: int = 2
    frame_tokens: int = 256
    fit_points: int = 3
    layer_sizes: str = "bench"
    layer_configs: dict[str, dict] = field(default_factory=dict)
    compile: bool = False

    @classmethod
    def gpu(cls, **kw) -> "LayerBenchConfig":
        """Paper scale on one GPU: width 3072, 48 heads (head dim 64), bf16, T from 1k to the 63 s video's 341,550
        tokens, paper windows (SWA 8192, local 18048), one video frame (1350 tokens) per decode-frame call, each
        layer's ``bench_paper_config`` (e.g. LaCT's large chunk at video scale: one CogVideoX latent frame, 1350
        tokens, per fast-weight update)."""
        base = dict(lengths=[1024, 4096, 16384, 65536, 131072, 262144, 341550], dim=3072, heads=48,
                    dtype="bfloat16", device="cuda", frame_tokens=1350, decode_steps=32, decode_frames=4,
                    repeats=5, warmup=2, max_call_seconds=60.0, layer_sizes="paper")
        return cls(**{**base, **kw})

    @classmethod
    def quick_config(cls, **kw) -> "LayerBenchConfig":
        """A seconds-long smoke run (CI): T in {64, 128, 256}, width 64, small windows and mini-batches."""
        base = dict(lengths=[64, 128, 256], dim=64, heads=2, repeats=2, warmup=1, max_seconds_per_point=2.0,
                    max_call_seconds=10.0, decode_steps=4, decode_frames=2, frame_tokens=32, fit_points=3,
                    layer_sizes="quick", threads=1, quick=True)
        return cls(**{**base, **kw})


@dataclass
class LayerBenchResult:
    """Records of one run plus what the report needs (run info, peaks, config)."""

    records: list[Measurement]
    peaks: dict | None
    config: LayerBenchConfig
    run: RunInfo
    notes: list[str]


def _check(cfg: LayerBenchConfig) -> list[str]:
    names = cfg.layers or L.sequence_mixers()  # frame-input mixers need whole frames: time them by name
    for n in names:
        if n not in L.available():
            raise ValueError(f"unknown layer {n!r} in benchmark; valid: {', '.join(L.available())}")
    bad = [m for m in cfg.modes if m not in MODES]
    if bad:
        raise ValueError(f"unknown mode(s) {bad}; valid: {', '.join(MODES)}")
    if not cfg.lengths or min(cfg.lengths) < 1:
        raise ValueError(f"lengths must be positive, got {cfg.lengths}")
    if not hasattr(torch, cfg.dtype) or not isinstance(getattr(torch, cfg.dtype), torch.dtype):
        raise ValueError(f"unknown dtype {cfg.dtype!r} (use e.g. float32, bfloat16)")
    if cfg.repeats < 1 or cfg.warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {cfg.repeats}, {cfg.warmup}")
    if cfg.decode_steps < 1 or cfg.decode_frames < 1 or cfg.frame_tokens < 1:
        raise ValueError("decode_steps, decode_frames and frame_tokens must be >= 1")
    if cfg.layer_sizes not in SIZES:
        raise ValueError(f"unknown layer_sizes {cfg.layer_sizes!r}; choose one of {', '.join(SIZES)}")
    torch.device(cfg.device)  # raises for a bad device string
    return names


def _build(name: str, cfg: LayerBenchConfig, backend: str, causal: bool | None) -> L.Mixer:
    over = mixer_bench_config(name, cfg.layer_sizes, cfg.layer_configs)
    if causal is not None and causal in L.mixer_class(name).causal_modes:
        over["causal"] = causal
    torch.manual_seed(0)
    layer = L.build(name, dim=cfg.dim, num_heads=cfg.heads, backend=backend, **over)
    return layer.to(device=torch.device(cfg.device), dtype=getattr(torch, cfg.dtype))


def _backend_plan(name: str, cfg: LayerBenchConfig) -> tuple[str, list[tuple[str, str | None]]]:
    """``(auto backend, [(backend, reason it cannot be timed here or None)])`` for layer ``name``."""
    device = torch.device(cfg.device)
    probe = _build(name, cfg, "auto", None)
    auto = probe.backend_for(device)
    reference = {b.name for b in probe.backend_table if b.reference}
    wanted: list[str] = []
    for tok in cfg.backends:
        if tok == "auto":
            wanted.append(auto)
        elif tok == "all":
            wanted += [b for b in probe.backends if b not in reference]
        elif tok == "reference":
            wanted += [b for b in probe.backends if b in reference]
        elif tok in probe.backends:
            wanted.append(tok)
    if not wanted:  # none of the requested names exists for this layer: time its automatic choice
        wanted = [auto]
    plan = []
    for b in dict.fromkeys(wanted):
        layer = _build(name, cfg, b, None)
        reason = layer.backend_supports(b, device)
        if device.type == "cpu" and b not in CPU_TIMEABLE:
            why = "not timed on CPU: a Triton/CUDA path, which runs there only under the Triton interpreter " \
                  "(~1 ms per program instance), far too slow to time"
            reason = why + (f" (backend check: {reason})" if reason else "")
        plan.append((b, reason))
    return auto, plan


def _series_key(m: Measurement) -> tuple:
    return (m.name, m.backend, m.mode)


def _inputs(B: int, T: int, D: int, device, dtype, seed: int) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)  # drawn on the device: no host copy of large inputs
    return torch.randn(B, T, D, generator=g, device=device, dtype=dtype)


def _point(layer, mode: str, T: int, cfg: LayerBenchConfig):
    """Closure to time for one point: ``(fn, units per call, unit, tokens per unit)``; ``layer``: the mixer or its
    compiled callable."""
    device, dtype = torch.device(cfg.device), getattr(torch, cfg.dtype)
    B, D = cfg.batch, cfg.dim
    x = _inputs(B, T, D, device, dtype, seed=T)
    if mode == "fwd":
        def fn():
            with torch.no_grad():
                return layer(x)
        return fn, 1, "call", T
    if mode == "fwd+bwd":
        xg = x.requires_grad_()

        def fn():
            layer(xg).float().square().mean().backward()
            layer.zero_grad(set_to_none=True)
            xg.grad = None
        return fn, 1, "call", T
    n, calls = (1, cfg.decode_steps) if mode == "decode" else (cfg.frame_tokens, cfg.decode_frames)
    with torch.no_grad():
        _, state0 = layer(x, return_state=True)  # prefill (not timed)
    xs = _inputs(B, n * calls, D, device, dtype, seed=T + 1)

    def fn():
        s = state0
        with torch.no_grad():
            for i in range(calls):
                _, s = layer(xs[:, i * n:(i + 1) * n], state=s, return_state=True)
        return s
    return fn, calls, ("token" if mode == "decode" else "frame"), n


def _extra(layer: L.Mixer, cfg: LayerBenchConfig, name: str, auto: str, T: int, cost: costs.Cost | None) -> dict:
    elem = next(layer.parameters()).element_size() if next(layer.parameters(), None) is not None else 4
    try:
        state = layer.state_size(T)
    except Exception:  # noqa: BLE001 - a layer whose state is undefined here
        state = None
    return {"dim": cfg.dim, "heads": cfg.heads, "causal": layer.causal, "auto_backend": auto,
            "is_auto": layer.config.backend == auto, "state_size": state,
            "state_bytes_at_param_dtype": None if state is None else state * elem,
            "params": sum(p.numel() for p in layer.parameters()),
            "config": dataclasses.asdict(layer.config), "cost_model": cost.model if cost else None}


def run_layer_bench(cfg: LayerBenchConfig, progress: bool = True, command: str | None = None) -> LayerBenchResult:
    """Measure every (layer, backend, mode, T) point; returns the records (one per point, skips included)."""
    names = _check(cfg)
    with torch_threads(cfg.threads):
        return _run(cfg, names, progress, command)


def _run(cfg: LayerBenchConfig, names: list[str], progress: bool, command: str | None) -> LayerBenchResult:
    loop = PointLoop(cfg, "layers", command)
    run, device, notes = loop.run, loop.device, list(cfg.notes)
    lengths = sorted(set(cfg.lengths))
    plans = {n: _backend_plan(n, cfg) for n in names}
    # length-major: a run cut short by its deadline (SEQMIX_BENCH_DEADLINE) loses the longest T, not whole layers
    points = [(n, b, r, m, T) for T in lengths for n in names for b, r in plans[n][1] for m in cfg.modes]
    bar = tqdm(points, desc="layers", disable=not progress, file=sys.stderr)
    built: dict[tuple, L.Mixer] = {}
    compiled: dict[tuple, object] = {}
    first = next(((n, b) for n, b, r, _, _ in points if r is None), None)
    if first is not None:  # process warm-up (untimed): lazy initialisation would otherwise bias the first point
        _point(_build(first[0], cfg, first[1], None), "fwd", lengths[0], cfg)[0]()
    for name, backend, reason, mode, T in bar:
        bar.set_postfix_str(f"{name}/{backend} {mode} T={T}")
        auto = plans[name][0]
        decode = mode in ("decode", "decode-frame")
        rec = loop.record(name, mode, T, backend, gate=gate("layers", name, backend, mode),
                          unit={"decode": "token", "decode-frame": "frame"}.get(mode, "call"),
                          tokens_per_unit={"decode": 1, "decode-frame": cfg.frame_tokens}.get(mode, T))
        if reason is not None:
            rec.status, rec.reason = "skipped", reason
            continue
        causal = True if decode else None
        bkey = (name, backend, decode)
        if bkey not in built:
            if any(k[0] != name for k in built):  # free the previous layer's instances (GPU memory)
                built.clear()
                compiled.clear()
            built[bkey] = _build(name, cfg, backend, causal)
            if cfg.compile:
                torch.compiler.reset()  # no cache limit across layers; each layer's graphs compile afresh
                compiled[bkey] = torch.compile(built[bkey], dynamic=False)
        layer = built[bkey]
        run_fn = compiled.get(bkey, layer)
        if decode and not layer.causal:
            rec.status, rec.reason = "skipped", "layer is not causal (no causal option): no decode"
            continue
        steps = cfg.decode_steps if mode == "decode" else cfg.decode_frames
        cost = costs.mode_cost(layer, mode, T, cfg.batch, steps=steps, frame_tokens=cfg.frame_tokens)
        rec.flops, rec.bytes = cost.flops, cost.bytes
        rec.extra = _extra(layer, cfg, name, auto, T, cost)
        key = _series_key(rec)
        call_flops = cost.flops * steps if decode else cost.flops
        if loop.over_budget(rec, key, T, call_flops):
            continue
        calls = {"decode": cfg.decode_steps, "decode-frame": cfg.decode_frames}.get(mode, 1)
        if cfg.compile:  # the first call of a new shape / mode compiles: timed on its own, then excluded
            t0 = time.perf_counter()
            _point(run_fn, mode, T, cfg)[0]()
            rec.extra["compile_seconds"] = time.perf_counter() - t0
        # A compiled call under the CPU tensor accounting (a dispatch mode) makes Dynamo skip the layer's frame for
        # good: every later call would run eager. CUDA's allocator statistics are safe.
        memory = not (cfg.compile and loop.device.type == "cpu")
        if not loop.time(rec, key, T, lambda: _point(run_fn, mode, T, cfg)[0], flops=call_flops, calls=calls,
                         memory=memory,
                         label=f"{name}/{backend} {mode} T={T}"):
            continue
        if rec.peak_bytes is None:
            rec.extra["memory_note"] = ("not recorded: the CPU tensor accounting would make compiled calls run eager"
                                        if not memory else "not recorded: the CPU tensor accounting cannot follow "
                                        "this call")
        rec.backend_used = getattr(layer, "last_backend", None) or backend

    loop.finish()
    notes += machine_notes(loop)
    if device.type == "cpu":
        notes.append("CPU run: only the PyTorch paths (torch, sdpa) are timed; Triton/CUDA backends (fla, mamba_ssm, "
                     "flash_attn, flex, seqmix kernels) are recorded as skipped with the reason.")
        la = run.machine.get("loadavg")
        if la and la[0] > 0.25 * (run.machine.get("cpu_count") or 1):
            notes.append(f"The machine was shared: load average {la[0]:.1f} on {run.machine.get('cpu_count')} cores "
                         "at the start (other processes ran beside the benchmark), so absolute times are noisy; "
                         "ratios and growth exponents are the robust numbers.")
    if cfg.quick:
        notes.append("--quick smoke run: tiny sizes, numbers are not meaningful.")
    return LayerBenchResult(loop.records, loop.peaks, cfg, run, notes)


# ---------------------------------------------------------------------------------------------------- summary
def summarize(ms: list[Measurement], fit_points: int = 3) -> dict:
    """Exponents per (layer, backend, mode) fit on the ``fit_points`` longest measured lengths; backend ratios;
    skipped series."""
    ok = [m for m in ms if m.ok]
    exps = []
    for name, backend, mode in sorted({_series_key(m) for m in ok}):
        pts = sorted((m for m in ok if _series_key(m) == (name, backend, mode)), key=lambda m: m.T)[-fit_points:]
        Ts = [m.T for m in pts]
        exps.append({
            "name": name, "backend": backend, "mode": mode, "fit_T": Ts,
            "time_exponent": fit_exponent(Ts, [m.median_s for m in pts]),
            "flops_exponent": fit_exponent(Ts, [m.flops for m in pts]) if all(m.flops for m in pts) else None,
            "memory_exponent": (fit_exponent(Ts, [m.peak_bytes for m in pts])
                                if all(m.peak_bytes for m in pts) else None),
        })
    ratios = []
    for name, mode, T in sorted({(m.name, m.mode, m.T) for m in ok}):
        group = [m for m in ok if (m.name, m.mode, m.T) == (name, mode, T)]
        if len(group) < 2:
            continue
        ref = next((m for m in group if m.extra.get("is_auto")), group[0])
        for m in group:
            if m is not ref:
                ratios.append({"name": name, "mode": mode, "T": T, "backend": m.backend, "vs": ref.backend,
                               "time_ratio": m.median_s / ref.median_s})
    skipped: dict[tuple, dict] = {}
    for m in ms:
        if m.ok:
            continue
        reason = m.reason or ""
        k = (m.name, m.backend, m.status, reason if not reason.startswith("a shorter") else "")
        if reason.startswith("a shorter"):  # fold the propagated skips into the series' first one
            k2 = next((kk for kk in skipped if kk[:2] == (m.name, m.backend) and m.mode in skipped[kk]["modes"]), None)
            if k2 is not None:
                skipped[k2]["T"] = sorted(set(skipped[k2]["T"]) | {m.T})
                continue
        e = skipped.setdefault(k, {"name": m.name, "backend": m.backend, "status": m.status, "reason": reason,
                                   "modes": [], "T": []})
        e["modes"] = sorted(set(e["modes"]) | {m.mode}, key=MODES.index)
        e["T"] = sorted(set(e["T"]) | {m.T})
    return {"exponents": exps, "backend_ratios": ratios, "skipped": list(skipped.values())}


def _f(x, fmt: str, empty: str = "") -> str:
    return empty if x is None or x != x else format(x, fmt)


def markdown_table(res: LayerBenchResult | list[Measurement], fit_points: int | None = None) -> str:
    ms = res.records if isinstance(res, LayerBenchResult) else res
    fp = fit_points or (res.config.fit_points if isinstance(res, LayerBenchResult) else 3)
    s = summarize(ms, fp)
    lines = [f"## Growth exponents in T (log-log slope over the {fp} longest measured lengths)", "",
             "| layer | backend | mode | fit over T | time exponent | cost-model FLOP exponent | memory exponent |",
             "|---|---|---|---|---:|---:|---:|"]
    for r in s["exponents"]:
        lines.append(f"| {r['name']} | {r['backend']} | {r['mode']} | {', '.join(map(str, r['fit_T']))} | "
                     f"{_f(r['time_exponent'], '.2f')} | {_f(r['flops_exponent'], '.2f')} | "
                     f"{_f(r['memory_exponent'], '.2f')} |")
    lines += ["", "## Measurements", "",
              "time = median per unit (call of T tokens; decode: one token after T of context; decode-frame: one "
              "call of `frame_tokens` tokens after T). GFLOP and % of peaks use the analytic cost model "
              "(estimates, `seqmix.bench.costs`).", "",
              "| layer | backend | mode | T | unit | time (ms) | tokens/s | peak mem (MB) | GFLOP/unit | "
              "% matmul peak | % copy BW | state size |",
              "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m in sorted((m for m in ms if m.ok), key=lambda m: (m.name, m.backend, MODES.index(m.mode), m.T)):
        lines.append(
            f"| {m.name} | {m.backend_used or m.backend} | {m.mode} | {m.T} | {m.unit} | {m.median_s * 1e3:.3g} | "
            f"{m.tokens_per_s:,.0f} | {_f(m.peak_bytes and m.peak_bytes / 2**20, '.1f')} | "
            f"{_f(m.flops and m.flops / 1e9, '.3g')} | {_f(m.frac_matmul_peak and 100 * m.frac_matmul_peak, '.1f')} | "
            f"{_f(m.frac_bandwidth and 100 * m.frac_bandwidth, '.1f')} | {m.extra.get('state_size', '')} |")
    comp = [m for m in ms if m.ok and "compile_seconds" in m.extra]
    if comp:
        lines += ["", "## torch.compile (dynamic=False): seconds of the first, compiling call", "",
                  "| layer | backend | mode | T | compile s | compiled time (ms) |", "|---|---|---|---:|---:|---:|"]
        for m in sorted(comp, key=lambda m: (m.name, m.backend, MODES.index(m.mode), m.T)):
            lines.append(f"| {m.name} | {m.backend_used or m.backend} | {m.mode} | {m.T} | "
                         f"{m.extra['compile_seconds']:.1f} | {m.median_s * 1e3:.3g} |")
    if s["backend_ratios"]:
        lines += ["", "## Backends side by side (time / time of the automatic choice, same run)", "",
                  "| layer | mode | T | backend | vs | time ratio |", "|---|---|---:|---|---|---:|"]
        for r in s["backend_ratios"]:
            lines.append(f"| {r['name']} | {r['mode']} | {r['T']} | {r['backend']} | {r['vs']} | "
                         f"{r['time_ratio']:.2f} |")
    if s["skipped"]:
        lines += ["", "## Not measured", "", "| layer | backend | modes | T | status | reason |",
                  "|---|---|---|---|---|---|"]
        for r in s["skipped"]:
            Ts = r["T"]
            tr = f"{Ts[0]}..{Ts[-1]}" if len(Ts) > 2 else ", ".join(map(str, Ts))
            lines.append(f"| {r['name']} | {r['backend']} | {', '.join(r['modes'])} | {tr} | {r['status']} | "
                         f"{r['reason']} |")
    gates = {}
    for m in ms:
        gates.setdefault(m.name, set()).update(m.gate)
    lines += ["", "## Correctness gates (tests that must pass for these numbers to mean anything)", ""]
    for n in sorted(gates):
        lines.append(f"- {n}: " + ", ".join(f"`{t}`" for t in sorted(gates[n])))
    return "\n".join(lines)


def plot(ms: list[Measurement], path: Path, title: str = "") -> Path | None:
    """Log-log time and peak memory against T, one row per mode, one line per (layer, backend)."""
    plt = pyplot(path)
    if plt is None:
        return None
    ok = [m for m in ms if m.ok]
    modes = [m for m in MODES if any(r.mode == m for r in ok)]
    if not modes:
        return None
    fig, axes = plt.subplots(len(modes), 2, figsize=(12, 3.6 * len(modes)), squeeze=False)
    names = sorted({(m.name, m.backend) for m in ok})
    cmap = plt.get_cmap("tab10")
    colors = {n: cmap(i % 10) for i, n in enumerate(sorted({n for n, _ in names}))}
    styles = ["-", "--", ":", "-."]
    for row, mode in enumerate(modes):
        for name, backend in names:
            pts = sorted((m for m in ok if (m.name, m.backend, m.mode) == (name, backend, mode)), key=lambda m: m.T)
            if not pts:
                continue
            bk = sorted({b for n, b in names if n == name})
            ls = styles[bk.index(backend) % len(styles)]
            label = name if len(bk) == 1 else f"{name} ({backend})"
            axes[row][0].plot([m.T for m in pts], [m.median_s * 1e3 for m in pts], ls, marker="o", ms=3,
                              color=colors[name], label=label)
            mem = [(m.T, m.peak_bytes / 2**20) for m in pts if m.peak_bytes]
            if mem:
                axes[row][1].plot(*zip(*mem), ls, marker="o", ms=3, color=colors[name], label=label)
        unit = {"decode": "per token", "decode-frame": "per frame"}.get(mode, "per call")
        for col, ylabel in enumerate([f"median time {unit} (ms)", "peak memory (MB)"]):
            ax = axes[row][col]
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("context length T (tokens)" if mode.startswith("decode") else "sequence length T (tokens)")
            ax.set_ylabel(ylabel)
            ax.set_title(mode)
            ax.grid(True, which="both", alpha=0.3)
        axes[row][0].legend(fontsize=7)
    return save_figure(fig, path, title=title, dpi=110)


def write_report(res: LayerBenchResult, out_dir: str | Path) -> dict:
    """Write ``results.json`` (validated ``seqmix.bench/v2``), ``results.md`` and ``results.png`` to ``out_dir``;
    returns the paths and the document."""
    cfg = res.config
    gates = {n: gate("layers", n) for n in sorted({m.name for m in res.records})}
    doc = make_doc("layers", res.run, cfg, res.records, summarize(res.records, cfg.fit_points), res.peaks, gates,
                   res.notes)
    over = {n: c for n in sorted({m.name for m in res.records})
            if (c := mixer_bench_config(n, cfg.layer_sizes, cfg.layer_configs))}
    sizes = (f"Width {cfg.dim}, {cfg.heads} heads, batch {cfg.batch}, {cfg.dtype}; layer configs ({cfg.layer_sizes} "
             f"sizes) {over or 'none'}; median of up to {cfg.repeats} timed calls after {cfg.warmup} warm-up "
             f"(at most {cfg.max_seconds_per_point:.0f} s of timed calls per point; points predicted over "
             f"{cfg.max_call_seconds:.0f} s per call are skipped); decode: {cfg.decode_steps} one-token steps, "
             f"decode-frame: {cfg.decode_frames} calls of {cfg.frame_tokens} tokens. Peak memory: "
             f"{'tensors allocated during one call (CPU live-tensor accounting)' if cfg.device == 'cpu' else 'torch.cuda.max_memory_allocated over one call'}.\n\n")
    md = markdown_header("Layer benchmark", doc) + sizes + markdown_table(res) + "\n"
    dev = res.run.machine.get("gpu") or res.run.machine.get("cpu_model")
    paths = write_doc(doc, out_dir, md, lambda p: plot(res.records, p, f"seqmix layers on {dev} "
                                                       f"(D={cfg.dim}, B={cfg.batch}, {cfg.dtype})"))
    paths["doc"] = doc
    return paths
