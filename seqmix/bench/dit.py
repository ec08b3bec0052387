"""DiT benchmark: the efficiency study of Dalal et al. 2025 (arXiv 2504.05298) in kind.

:class:`~seqmix.backbones.dit.SegmentedDiT` forward (inference) and forward + backward (training) time at the
paper's 3 / 9 / 18 / 30 / 63 s layouts, for

* ``local``: local attention only (no global layer; attention inside each 3 s window), the reference (1x);
* ``full_window``: FULL ATTENTION as the paper means it - self-attention over the whole video in one window
  (every latent frame and every segment's text), no global layer. The paper: 11x (inference) / 12x (training)
  slower than local attention at 63 s;
* ``full_attn``: local attention + a ``full_attn`` global layer (non-causal full attention over the whole video,
  run forward and on the reversed sequence like every global layer): the global-layer slot filled by the quadratic
  upper bound;
* every other registry layer that mixes tokens (``ttt_mlp``, ``ttt_linear``, ``mamba2``, ``gated_deltanet``,
  ``swa``, ``local_attn``, ...; read from the registry): local attention + that global layer
  (paper at 63 s: TTT-MLP 2.5x / 3.8x, Gated DeltaNet 1.8x / 1.8x).

Every time is reported relative to ``local`` at the same duration and mode (measured in the same run).

Scale. The paper's model is CogVideoX-5B (42 blocks of width 3072, 1350 tokens per latent frame, 341,550 video
tokens at 63 s) on H100s. On CPU the default is REDUCED: 2 blocks of width 64 (2 heads x 32), a 12 x 16 latent
grid (48 tokens per frame), 16 text tokens per segment, fp32 - every duration keeps the paper's segment / frame
structure (13 latent frames per 3 s window sharing one frame), so the ratios keep their shape but not their values
(at width 64 the per-token projection / MLP work is tiny next to the attention and the Python-level loops of the
recurrent layers). :meth:`DiTBenchConfig.gpu` is close to the paper: width 3072 (48 x 64), the 60 x 90 latent grid
(1350 tokens per frame), 226 text tokens per segment, bf16, one block (the ratio is per block; the embeddings and
head are negligible), paper windows (SWA 8192 tokens).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from seqmix import layers as L
from seqmix.backbones.dit import DiTConfig, SegmentedDiT
from seqmix.backbones.layout import VideoLayout
from seqmix.utils.plots import pyplot, save_figure

from . import costs
from .core import Measurement, median, torch_threads
from .driver import SIZES, BenchConfig, PointLoop, machine_notes, mixer_bench_config
from .gates import gate
from .report import RunInfo, make_doc, markdown_header, write_doc

logger = logging.getLogger(__name__)

__all__ = ["DiTBenchConfig", "DiTBenchResult", "variants", "description", "PAPER_63S", "run_dit_bench", "summarize",
           "markdown_table", "write_report"]

#: The variants without a global layer: variant -> (global layer, one attention window over the whole video?).
_NO_GLOBAL_LAYER: dict[str, tuple[str | None, bool]] = {"local": (None, False), "full_window": (None, True)}
_NO_GLOBAL_LAYER_DESCRIPTIONS = {
    "local": "local attention only (3 s windows), no global layer: the 1x reference",
    "full_window": "full attention: one attention window over the whole video, no global layer",
}


def variants() -> dict[str, tuple[str | None, bool]]:
    """Every variant -> (global layer registry name or None, one attention window over the whole video?): the two
    without a global layer, then local attention + each registry layer that mixes tokens (read from the registry,
    so a newly registered mixer is benchmarked without an edit here)."""
    from seqmix import layers as L

    return {**_NO_GLOBAL_LAYER, **{n: (n, False) for n in L.sequence_mixers() if L.mixer_class(n).mixes_tokens}}


def description(variant: str) -> str:
    """One line describing ``variant`` for the report."""
    if variant in _NO_GLOBAL_LAYER_DESCRIPTIONS:
        return _NO_GLOBAL_LAYER_DESCRIPTIONS[variant]
    return f"local attention + {variant} global layer (forward and reversed)"


def _order(variant: str) -> int:
    names = list(variants())
    return names.index(variant) if variant in names else len(names)


#: The paper's efficiency numbers at 63 s, relative to local attention: variant -> (inference, training).
PAPER_63S: dict[str, tuple[float, float]] = {"full_window": (11.0, 12.0), "ttt_mlp": (2.5, 3.8),
                                             "gated_deltanet": (1.8, 1.8)}
MODES = ("fwd", "fwd+bwd")
MODE_NAMES = {"fwd": "inference (fwd)", "fwd+bwd": "training (fwd+bwd)"}
_PAPER_TOKENS_PER_FRAME = 1350


@dataclass(kw_only=True)
class DiTBenchConfig(BenchConfig):
    """What to measure. Defaults: the REDUCED CPU scale (see the module docstring); :meth:`gpu` for paper scale.

    Attributes:
        variants: names from :func:`variants` (default: all).
        durations: seconds, from the paper's presets 3, 9, 18, 30, 63.
        modes: ``fwd`` (inference) and / or ``fwd+bwd`` (training).
        num_layers, heads, head_dim: DiT blocks, attention heads and head dim (width = heads x head_dim).
        latent_height, latent_width, patch_size: latent grid per frame and patch (tokens per frame = h w / p^2).
        text_len: text tokens per segment.
        in_channels, text_embed_dim, time_embed_dim: input sizes of the DiT.
        mixer_sizes: each global layer's sizes: ``defaults`` (its config defaults, the paper's sizes), ``paper``
            (its class's ``bench_paper_config``, e.g. TTT's scan checkpointing) or ``quick`` (``bench_quick_config``).
            A window in tokens sized for the paper's videos (the class's ``paper_token_window``, e.g. SWA's 8192
            tokens = 6.07 frames) is scaled to this grid where neither sets it.
        mixer_configs: per-global-layer config overrides on top of ``mixer_sizes``. A class's ``dit_config`` (e.g.
            LaCT's chunks aligned to the 3 s segments, as ``recipes/t2v/lact.yaml``) applies under every preset.
        gradient_checkpointing: recompute blocks in backward (as the paper's training).
        reduced: the reduced CPU scale (said in every report).
        Shared fields (batch, repeats, budgets, device, dtype, threads, peaks, quick, notes):
        :class:`~seqmix.bench.driver.BenchConfig`.
    """

    variants: list[str] = field(default_factory=lambda: list(variants()))
    durations: list[int] = field(default_factory=lambda: [3, 9, 18, 30, 63])
    modes: list[str] = field(default_factory=lambda: list(MODES))
    num_layers: int = 2
    heads: int = 2
    head_dim: int = 32
    latent_height: int = 12
    latent_width: int = 16
    patch_size: int = 2
    text_len: int = 16
    in_channels: int = 16
    text_embed_dim: int = 64
    time_embed_dim: int = 64
    mixer_sizes: str = "defaults"
    mixer_configs: dict[str, dict] = field(default_factory=dict)
    gradient_checkpointing: bool = False
    max_seconds_per_point: float = 20.0
    max_call_seconds: float = 60.0
    reduced: bool = True

    @classmethod
    def gpu(cls, **kw) -> "DiTBenchConfig":
        """Close to the paper on one GPU: CogVideoX-5B width (48 heads x 64), 60 x 90 latents (1350 tokens per
        frame), 226 text tokens per segment, T5 / time widths 4096 / 512, bf16, ONE block, SWA window 8192, TTT scan
        checkpointed every 16 mini-batches (as the paper, to bound training memory)."""
        base = dict(num_layers=1, heads=48, head_dim=64, latent_height=60, latent_width=90, text_len=226,
                    text_embed_dim=4096, time_embed_dim=512, device="cuda", dtype="bfloat16", repeats=3, warmup=1,
                    max_call_seconds=120.0, reduced=False, mixer_sizes="paper")
        return cls(**{**base, **kw})

    @classmethod
    def quick_config(cls, **kw) -> "DiTBenchConfig":
        """A seconds-long smoke run (CI): 3 s and 9 s, 1 block of width 32, 4 x 6 latents (6 tokens per frame)."""
        base = dict(durations=[3, 9], num_layers=1, heads=2, head_dim=16, latent_height=4, latent_width=6,
                    text_len=4, text_embed_dim=16, time_embed_dim=16, in_channels=4, repeats=1, warmup=1,
                    max_seconds_per_point=2.0, max_call_seconds=10.0, threads=1, quick=True, mixer_sizes="quick")
        return cls(**{**base, **kw})

    @property
    def dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def tokens_per_frame(self) -> int:
        return (self.latent_height // self.patch_size) * (self.latent_width // self.patch_size)

    def mixer_config(self, mixer: str) -> dict:
        """Config fields of global layer ``mixer`` in this run (sizes preset, overrides, rescaled window)."""
        over = {**L.mixer_class(mixer).Tooling.dit_config,
                **mixer_bench_config(mixer, self.mixer_sizes, self.mixer_configs)}
        knob = L.mixer_class(mixer).Tooling.paper_token_window
        if knob and knob not in over:
            paper = next(f.default for f in dataclasses.fields(L.config_class(mixer)) if f.name == knob)
            over[knob] = max(1, round(paper / _PAPER_TOKENS_PER_FRAME * self.tokens_per_frame))
        return over


@dataclass
class DiTBenchResult:
    records: list[Measurement]
    peaks: dict | None
    config: DiTBenchConfig
    run: RunInfo
    notes: list[str]


def _check(cfg: DiTBenchConfig) -> None:
    known = variants()
    bad = [v for v in cfg.variants if v not in known]
    if bad:
        raise ValueError(f"unknown DiT variant(s) {bad}; valid: {', '.join(known)}")
    bad = [d for d in cfg.durations if d not in VideoLayout.PAPER_DURATIONS]
    if bad:
        raise ValueError(f"no paper layout for duration(s) {bad} s; valid: {sorted(VideoLayout.PAPER_DURATIONS)}")
    bad = [m for m in cfg.modes if m not in MODES]
    if bad:
        raise ValueError(f"unknown mode(s) {bad}; valid: {', '.join(MODES)}")
    if not hasattr(torch, cfg.dtype) or not isinstance(getattr(torch, cfg.dtype), torch.dtype):
        raise ValueError(f"unknown dtype {cfg.dtype!r} (use e.g. float32, bfloat16)")
    if cfg.mixer_sizes not in SIZES:
        raise ValueError(f"unknown mixer_sizes {cfg.mixer_sizes!r}; choose one of {', '.join(SIZES)}")


def layout_for(cfg: DiTBenchConfig, seconds: int, variant: str) -> VideoLayout:
    """The paper layout of ``seconds`` at the configured grid; ``full_window``: the same tokens in ONE window."""
    lay = VideoLayout.paper(seconds, text_len=cfg.text_len, latent_height=cfg.latent_height,
                            latent_width=cfg.latent_width, patch_size=cfg.patch_size)
    if not variants()[variant][1]:
        return lay
    # one window covering every latent frame (num_frames = window_frames), with all segments' text in its slot
    return VideoLayout(num_segments=1, text_len=lay.text_tokens, latent_height=cfg.latent_height,
                       latent_width=cfg.latent_width, patch_size=cfg.patch_size, window_frames=lay.num_frames,
                       overlap_frames=lay.overlap_frames)


def build_model(cfg: DiTBenchConfig, variant: str) -> SegmentedDiT:
    mixer, _ = variants()[variant]
    torch.manual_seed(0)
    dc = DiTConfig(num_attention_heads=cfg.heads, attention_head_dim=cfg.head_dim, in_channels=cfg.in_channels,
                   out_channels=cfg.in_channels, text_embed_dim=cfg.text_embed_dim, time_embed_dim=cfg.time_embed_dim,
                   num_layers=cfg.num_layers, patch_size=cfg.patch_size, mixer=mixer,
                   mixer_config=cfg.mixer_config(mixer) if mixer else {},
                   gradient_checkpointing=cfg.gradient_checkpointing)
    return SegmentedDiT(dc).to(device=torch.device(cfg.device), dtype=getattr(torch, cfg.dtype))


def _point(model: SegmentedDiT, lay: VideoLayout, mode: str, cfg: DiTBenchConfig):
    device, dtype = torch.device(cfg.device), getattr(torch, cfg.dtype)
    g = torch.Generator(device=device).manual_seed(lay.total_tokens)
    B = cfg.batch
    lat = torch.randn(B, lay.num_frames, cfg.in_channels, lay.latent_height, lay.latent_width, generator=g,
                      device=device, dtype=dtype)
    txt = torch.randn(B, lay.text_tokens, cfg.text_embed_dim, generator=g, device=device, dtype=dtype)
    t = torch.full((B,), 500.0, device=device)
    if mode == "fwd":
        model.eval()

        def fn():
            with torch.no_grad():
                return model(lat, t, txt, lay)
        return fn
    model.train()

    def fn():
        model(lat, t, txt, lay).float().square().mean().backward()
        model.zero_grad(set_to_none=True)
    return fn


def run_dit_bench(cfg: DiTBenchConfig, progress: bool = True, command: str | None = None) -> DiTBenchResult:
    """Measure every (variant, duration, mode) point; returns one record per point (skips included)."""
    _check(cfg)
    with torch_threads(cfg.threads):
        return _run(cfg, progress, command)


def _run(cfg: DiTBenchConfig, progress: bool, command: str | None) -> DiTBenchResult:
    loop = PointLoop(cfg, "dit", command)
    run, device = loop.run, loop.device
    durations = sorted(set(cfg.durations))
    # The reference first, so that every ratio has its denominator; the variants of one (duration, mode) are measured
    # back to back, so that a ratio compares timings taken within seconds of each other (load on a shared machine
    # drifts over minutes). Durations ascend, as the budget prediction of a series needs.
    names = ["local"] + [v for v in cfg.variants if v != "local"]
    points = [(v, s, m) for s in durations for m in cfg.modes for v in names]
    models: dict[str, SegmentedDiT] = {"local": build_model(cfg, "local")}
    # process warm-up (untimed): first calls pay for lazy initialisation that would otherwise bias the first point
    lay0 = layout_for(cfg, durations[0], "local")
    for mode in cfg.modes:
        _point(models["local"], lay0, mode, cfg)()
    bar = tqdm(points, desc="dit", disable=not progress, file=sys.stderr)
    for variant, seconds, mode in bar:
        bar.set_postfix_str(f"{variant} {seconds}s {mode}")
        mixer, one_window = variants()[variant]
        key_model = "local" if variant == "full_window" else variant  # same parameters, other layout
        if key_model not in models:
            models[key_model] = build_model(cfg, key_model)
        model = models[key_model]
        lay = layout_for(cfg, seconds, variant)
        gl = next((b.global_layer for b in model.transformer_blocks if b.global_layer is not None), None)
        backend = gl.mixer.backend_for(device) if gl is not None else "sdpa"
        cost = costs.dit_cost(model, lay, mode, cfg.batch)
        rec = loop.record(
            variant, mode, lay.total_tokens, backend, unit="call", tokens_per_unit=lay.total_tokens, flops=cost.flops,
            bytes=cost.bytes, gate=gate("dit", variant, mixer=mixer),
            extra={"seconds": seconds, "segments": VideoLayout.PAPER_DURATIONS[seconds], "mixer": mixer,
                   "one_window": one_window, "description": description(variant),
                   "latent_frames": lay.num_frames, "tokens_per_frame": lay.tokens_per_frame,
                   "video_tokens": lay.video_tokens, "text_tokens": lay.text_tokens,
                   "window_tokens": lay.window_tokens, "width": cfg.dim, "num_layers": cfg.num_layers,
                   "params": sum(p.numel() for p in model.parameters()),
                   "mixer_config": dataclasses.asdict(gl.mixer.config) if gl is not None else None,
                   "state_size": model.state_size(lay.total_tokens) if gl is not None else 0,
                   "reduced_scale": cfg.reduced})
        key = (variant, mode)
        if loop.over_budget(rec, key, lay.total_tokens, cost.flops):
            continue
        loop.time(rec, key, lay.total_tokens, lambda: _point(model, lay, mode, cfg), flops=cost.flops,
                  label=f"dit {variant} {seconds}s {mode}", cleanup=lambda: model.zero_grad(set_to_none=True))

    loop.finish()
    notes = list(cfg.notes)
    if cfg.reduced:
        notes.append(
            f"REDUCED SCALE (not the paper's model): {cfg.num_layers} block(s) of width {cfg.dim} "
            f"({cfg.heads} heads x {cfg.head_dim}), {cfg.latent_height} x {cfg.latent_width} latents with patch "
            f"{cfg.patch_size} = {cfg.tokens_per_frame} tokens per latent frame (paper: 1350), {cfg.text_len} text "
            f"tokens per segment (paper: up to ~500), {cfg.dtype}. The segment / frame structure of every duration "
            "is the paper's; the ratios keep their shape, not their values.")
    notes.append("'full_window' is the paper's full attention (one attention window over the whole video, no global "
                 "layer); 'full_attn' is local attention plus a full-attention global layer run in both directions.")
    notes += machine_notes(loop)
    if device.type == "cpu":
        notes.append("CPU: every global layer runs its PyTorch path (torch / sdpa); the recurrent layers' chunk / "
                     "mini-batch loops are Python-level, which inflates their cost at this small width relative "
                     "to fused GPU kernels.")
        la = run.machine.get("loadavg")
        if la and la[0] > 0.25 * (run.machine.get("cpu_count") or 1):
            notes.append(f"The machine was shared: load average {la[0]:.1f} on {run.machine.get('cpu_count')} "
                         "cores at the start (other processes ran beside the benchmark); absolute times are noisy.")
    if cfg.quick:
        notes.append("--quick smoke run: tiny sizes, numbers are not meaningful.")
    return DiTBenchResult(loop.records, loop.peaks, cfg, run, notes)


# --------------------------------------------------------------------------------------------------- summary
def summarize(ms: list[Measurement]) -> dict:
    """Times relative to ``local`` at the same duration and mode, plus the paper's 63 s numbers."""
    ok = {(m.name, m.extra["seconds"], m.mode): m for m in ms if m.ok}
    rel = []
    for (name, sec, mode), m in sorted(ok.items(), key=lambda kv: (kv[0][1], kv[0][2], _order(kv[0][0]))):
        ref = ok.get(("local", sec, mode))
        paper = PAPER_63S.get(name, (None, None))[MODES.index(mode)] if sec == 63 else None
        rel.append({"name": name, "seconds": sec, "mode": mode, "T": m.T, "median_s": m.median_s,
                    "relative_to_local": m.median_s / ref.median_s if ref else None, "paper_relative": paper})
    return {"relative": rel, "paper_63s": {k: {"fwd": v[0], "fwd+bwd": v[1]} for k, v in PAPER_63S.items()},
            "reference": "local"}


def _f(x, fmt: str) -> str:
    return "" if x is None else format(x, fmt)


def markdown_table(res: DiTBenchResult | list[Measurement]) -> str:
    ms = res.records if isinstance(res, DiTBenchResult) else res
    s = summarize(ms)["relative"]
    secs = sorted({r["seconds"] for r in s})
    names = sorted({r["name"] for r in s}, key=_order)
    lines = []
    for mode in MODES:
        rows = [r for r in s if r["mode"] == mode]
        if not rows:
            continue
        lines += [f"## {MODE_NAMES[mode]}: time relative to local attention only", "",
                  "| variant | " + " | ".join(f"{x} s" for x in secs) + " | paper, 63 s |",
                  "|---|" + "---:|" * (len(secs) + 1)]
        for n in names:
            cells = []
            for sec in secs:
                r = next((r for r in rows if r["name"] == n and r["seconds"] == sec), None)
                cells.append(_f(r and r["relative_to_local"], ".2f") + ("x" if r and r["relative_to_local"] else ""))
            paper = PAPER_63S.get(n, (None, None))[MODES.index(mode)]
            lines.append(f"| {n} | " + " | ".join(cells) + f" | {_f(paper, '.1f')}{'x' if paper else ''} |")
        lines.append("")
    lines += ["## Absolute times", "",
              "| variant | mode | seconds | tokens | time (s) | tokens/s | peak mem (MB) | GFLOP | % matmul peak |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m in sorted((m for m in ms if m.ok), key=lambda m: (_order(m.name), m.mode, m.T)):
        lines.append(f"| {m.name} | {m.mode} | {m.extra['seconds']} | {m.T} | {m.median_s:.3g} | "
                     f"{m.tokens_per_s:,.0f} | {_f(m.peak_bytes and m.peak_bytes / 2**20, '.1f')} | "
                     f"{_f(m.flops and m.flops / 1e9, '.3g')} | "
                     f"{_f(m.frac_matmul_peak and 100 * m.frac_matmul_peak, '.1f')} |")
    bad = [m for m in ms if not m.ok]
    if bad:
        lines += ["", "## Not measured", "", "| variant | mode | seconds | status | reason |", "|---|---|---:|---|---|"]
        for m in bad:
            lines.append(f"| {m.name} | {m.mode} | {m.extra.get('seconds')} | {m.status} | {m.reason} |")
    lines += ["", "## Variants", ""] + [f"- `{v}`: {description(v)}" for v in names]
    return "\n".join(lines)


def plot(ms: list[Measurement], path: Path, title: str = "") -> Path | None:
    """Relative-cost bars per duration (one bar per variant), inference and training side by side, log scale."""
    plt = pyplot(path)
    if plt is None:
        return None
    rel = [r for r in summarize(ms)["relative"] if r["relative_to_local"] and r["name"] != "local"]
    if not rel:
        return None
    secs = sorted({r["seconds"] for r in rel})
    names = sorted({r["name"] for r in rel}, key=_order)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6), sharey=True)
    cmap = plt.get_cmap("tab10")
    width = 0.8 / max(1, len(names))
    for ax, mode in zip(axes, MODES):
        for i, n in enumerate(names):
            xs, ys = [], []
            for j, sec in enumerate(secs):
                r = next((r for r in rel if r["name"] == n and r["seconds"] == sec and r["mode"] == mode), None)
                if r:
                    xs.append(j + (i - (len(names) - 1) / 2) * width)
                    ys.append(r["relative_to_local"])
            ax.bar(xs, ys, width, color=cmap(i % 10), label=n)
            paper = PAPER_63S.get(n)
            if paper and 63 in secs:
                j = secs.index(63)
                ax.plot([j + (i - (len(names) - 1) / 2) * width], [paper[MODES.index(mode)]], "k*", ms=9,
                        label="paper (63 s)" if i == names.index(next(v for v in names if v in PAPER_63S)) else None)
        ax.axhline(1.0, color="gray", lw=1)
        ax.set_xticks(range(len(secs)), [f"{s} s" for s in secs])
        ax.set_yscale("log")
        ax.set_title(MODE_NAMES[mode])
        ax.set_ylabel("time relative to local attention only")
        ax.grid(True, axis="y", which="both", alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    return save_figure(fig, path, title=title, dpi=110)


def write_report(res: DiTBenchResult, out_dir: str | Path) -> dict:
    cfg = res.config
    gates = {v: gate("dit", v, mixer=variants().get(v, (None,))[0]) for v in sorted({m.name for m in res.records})}
    doc = make_doc("dit", res.run, cfg, res.records, summarize(res.records), res.peaks, gates, res.notes)
    scale = "REDUCED CPU scale" if cfg.reduced else "paper-like scale"
    globals_ = sorted({variants()[m.name][0] for m in res.records if variants().get(m.name, (None,))[0]})
    mixers = {m: c for m in globals_ if (c := cfg.mixer_config(m))}
    sizes = (f"SegmentedDiT, {scale}: {cfg.num_layers} block(s), width {cfg.dim} ({cfg.heads} x {cfg.head_dim}), "
             f"latents {cfg.latent_height} x {cfg.latent_width} / patch {cfg.patch_size} = {cfg.tokens_per_frame} "
             f"tokens per frame, {cfg.text_len} text tokens per segment, batch {cfg.batch}, {cfg.dtype}; global-layer "
             f"configs ({cfg.mixer_sizes} sizes) {mixers or 'none'}; median of up to "
             f"{cfg.repeats} timed calls after {cfg.warmup} warm-up.\n\n")
    md = markdown_header("DiT efficiency benchmark (paper's efficiency study in kind)", doc) + sizes + \
        markdown_table(res) + "\n"
    dev = res.run.machine.get("gpu") or res.run.machine.get("cpu_model")
    paths = write_doc(doc, out_dir, md, lambda p: plot(res.records, p, f"SegmentedDiT cost relative to local attention "
                                                       f"({scale}, D={cfg.dim}, {cfg.tokens_per_frame} tok/frame, {dev})"))
    paths["doc"] = doc
    return paths
