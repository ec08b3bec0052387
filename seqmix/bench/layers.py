"""Layer benchmark: forward and forward+backward time and peak memory of registry layers against T.

Every layer is built at the same width / heads and timed on the same inputs in one run, so ratios between
layers are meaningful on the machine that ran it. The report gives, per layer and mode, the growth exponent of
time in T (slope on log-log over the longest lengths): ~1 for linear-cost mixers, ~2 for full attention.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from seqmix import layers as L
from seqmix.utils.memory import peak_memory

from .core import Measurement, fit_exponent, machine_info, median, time_call

logger = logging.getLogger(__name__)

__all__ = ["LayerBenchConfig", "run_layer_bench", "write_report"]


@dataclass(kw_only=True)
class LayerBenchConfig:
    """What to measure.

    Attributes:
        layers: registry names (default: every registered layer).
        lengths: sequence lengths T.
        batch: batch size B.
        dim, heads: model width and heads used for every layer.
        modes: any of ``"fwd"`` (no grad) and ``"fwd+bwd"``.
        repeats, warmup: timed and untimed runs per point (the median is reported).
        max_seconds_per_point: stop repeating a point after this many timed seconds.
        layer_configs: per-layer config overrides, e.g. ``{"ttt_mlp": {"mini_batch_size": 16}}``.
        device, dtype: where and in which precision to run.
    """

    layers: list[str] | None = None
    lengths: list[int] = field(default_factory=lambda: [256, 512, 1024, 2048, 4096])
    batch: int = 1
    dim: int = 256
    heads: int = 4
    modes: list[str] = field(default_factory=lambda: ["fwd", "fwd+bwd"])
    repeats: int = 3
    warmup: int = 1
    max_seconds_per_point: float = 10.0
    layer_configs: dict[str, dict] = field(default_factory=dict)
    device: str = "cpu"
    dtype: str = "float32"


_MODES = ("fwd", "fwd+bwd")


def _check(cfg: LayerBenchConfig) -> list[str]:
    names = cfg.layers or L.available()
    for n in names:
        if n not in L.available():
            raise ValueError(f"unknown layer {n!r} in benchmark; valid: {', '.join(L.available())}")
    bad = [m for m in cfg.modes if m not in _MODES]
    if bad:
        raise ValueError(f"unknown mode(s) {bad}; valid: {', '.join(_MODES)}")
    if not cfg.lengths or min(cfg.lengths) < 1:
        raise ValueError(f"lengths must be positive, got {cfg.lengths}")
    if not hasattr(torch, cfg.dtype) or not isinstance(getattr(torch, cfg.dtype), torch.dtype):
        raise ValueError(f"unknown dtype {cfg.dtype!r} (use e.g. float32, bfloat16)")
    return names


def run_layer_bench(cfg: LayerBenchConfig, progress: bool = True) -> list[Measurement]:
    """Measure every (layer, T, mode) point; returns one :class:`Measurement` per point."""
    names = _check(cfg)
    device, dtype = torch.device(cfg.device), getattr(torch, cfg.dtype)
    points = [(n, T, m) for n in names for T in sorted(cfg.lengths) for m in cfg.modes]
    out: list[Measurement] = []
    built: dict[str, L.Mixer] = {}
    bar = tqdm(points, desc="layers", disable=not progress, file=sys.stderr)
    for name, T, mode in bar:
        bar.set_postfix_str(f"{name} T={T} {mode}")
        if name not in built:
            torch.manual_seed(0)
            built[name] = L.build(name, dim=cfg.dim, num_heads=cfg.heads, **cfg.layer_configs.get(name, {}))
            built[name].to(device=device, dtype=dtype)
        layer = built[name]
        x = torch.randn(cfg.batch, T, cfg.dim, device=device, dtype=dtype)

        if mode == "fwd":
            def step():
                with torch.no_grad():
                    return layer(x)
        else:
            xg = x.requires_grad_()

            def step():
                layer(xg).float().square().mean().backward()
                layer.zero_grad(set_to_none=True)
                xg.grad = None

        times = time_call(step, repeats=cfg.repeats, warmup=cfg.warmup, device=device,
                          max_seconds=cfg.max_seconds_per_point)
        _, peak = peak_memory(step, device)
        t = median(times)
        out.append(Measurement(
            suite="layers", name=name, mode=mode, T=T, batch=cfg.batch, median_s=t,
            tokens_per_s=cfg.batch * T / t, peak_bytes=int(peak), backend=layer.backend_for(device),
            dtype=cfg.dtype, device=str(device),
            extra={"dim": cfg.dim, "heads": cfg.heads, "state_size": layer.state_size(),
                   "params": sum(p.numel() for p in layer.parameters()), "repeats": len(times),
                   "config": cfg.layer_configs.get(name, {})},
        ))
    return out


def summarize(ms: list[Measurement], fit_points: int = 3) -> list[dict]:
    """Per (layer, mode): growth exponents of time and memory in T, fit on the ``fit_points`` longest lengths."""
    rows = []
    keys = sorted({(m.name, m.mode) for m in ms})
    for name, mode in keys:
        pts = sorted((m for m in ms if m.name == name and m.mode == mode), key=lambda m: m.T)[-fit_points:]
        rows.append({
            "name": name, "mode": mode,
            "time_exponent": fit_exponent([m.T for m in pts], [m.median_s for m in pts]),
            "memory_exponent": fit_exponent([m.T for m in pts], [max(m.peak_bytes, 1) for m in pts]),
        })
    return rows


def markdown_table(ms: list[Measurement]) -> str:
    lines = ["| layer | backend | mode | T | time (ms) | tokens/s | peak mem (MB) | state size | params |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for m in sorted(ms, key=lambda m: (m.name, m.mode, m.T)):
        lines.append(
            f"| {m.name} | {m.backend} | {m.mode} | {m.T} | {m.median_s * 1e3:.1f} | {m.tokens_per_s:,.0f} | "
            f"{m.peak_bytes / 2**20:.1f} | {m.extra.get('state_size', '')} | {m.extra.get('params', '')} |"
        )
    lines += ["", "| layer | mode | time exponent in T | memory exponent in T |", "|---|---|---:|---:|"]
    for r in summarize(ms):
        lines.append(f"| {r['name']} | {r['mode']} | {r['time_exponent']:.2f} | {r['memory_exponent']:.2f} |")
    return "\n".join(lines)


def plot(ms: list[Measurement], path: Path) -> Path | None:
    """Log-log plots of time and peak memory against T, one line per (layer, mode). Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: skipping %s", path)
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, mode in sorted({(m.name, m.mode) for m in ms}):
        pts = sorted((m for m in ms if m.name == name and m.mode == mode), key=lambda m: m.T)
        style = "-" if mode == "fwd+bwd" else "--"
        axes[0].plot([m.T for m in pts], [m.median_s * 1e3 for m in pts], style, marker="o", label=f"{name} {mode}")
        axes[1].plot([m.T for m in pts], [m.peak_bytes / 2**20 for m in pts], style, marker="o", label=f"{name} {mode}")
    for ax, ylabel in zip(axes, ["median time (ms)", "peak tensor memory (MB)"]):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    dev = ms[0].device if ms else ""
    fig.suptitle(f"seqmix layers on {dev} (B={ms[0].batch if ms else '?'})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(ms: list[Measurement], out_dir: str | Path, cfg: LayerBenchConfig, command: str | None = None) -> dict:
    """Write ``results.json``, ``results.md`` and ``results.png`` to ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    command = command or " ".join(shlex.quote(a) for a in sys.argv)
    meta = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": machine_info(cfg.device), "config": cfg.__dict__}
    doc = {"schema": "seqmix.bench/v1", "meta": meta, "records": [m.to_dict() for m in ms],
           "summary": summarize(ms)}
    (out / "results.json").write_text(json.dumps(doc, indent=1, default=str))
    md = (f"# Layer benchmark\n\nCommand: `{command}`  \nDate: {meta['date']}  \n"
          f"Machine: {meta['machine']['processor']}, {meta['machine']['cpu_count']} cores, torch "
          f"{meta['machine']['torch']}, device {meta['machine']['device']}  \n"
          f"Width {cfg.dim}, {cfg.heads} heads, batch {cfg.batch}, {cfg.dtype}; median of up to {cfg.repeats} runs "
          f"after {cfg.warmup} warm-up. Peak memory: tensors allocated during the call.\n\n"
          f"{markdown_table(ms)}\n")
    (out / "results.md").write_text(md)
    png = plot(ms, out / "results.png")
    return {"json": out / "results.json", "md": out / "results.md", "png": png}
