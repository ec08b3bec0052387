"""TTT kernel benchmark: the fused Triton scan (layer ``backend="triton"``) against the PyTorch dual-form scan
(``backend="torch"``), forward and forward+backward, over T.

Each point times the scan exactly as the TTT layers call it for that backend (``seqmix.kernels.ttt_triton.
ttt_scan_triton`` / ``seqmix.ops.ttt.ttt_scan`` on ``q, k, r [B, H, T, K]``, ``eta [B, H, T]`` and a broadcast
initial state), so the Q/K/V/O projections the two backends share are left out. Reported per point: median time,
tokens/s, peak memory (``torch.cuda.max_memory_allocated`` over one call on GPU, live-tensor accounting on CPU),
matmul FLOPs of the scan (:func:`ttt_scan_flops`) and the achieved TFLOP/s, with the fraction of the bf16 matmul
peak measured in the same run.

Paper shapes (Dalal et al. 2025, arXiv 2504.05298): B = 1, 48 heads, head dim 64 (TTT-MLP hidden 256), mini-batch
64 for TTT-MLP (16 for TTT-Linear as in the public training configs), non-causal (video) form, T from the 3 s
video (18,048 tokens) to the 63 s one (341,550). On a GPU machine one command runs it::

    seqmix bench ttt-kernels --device cuda

(first call compiles and autotunes the kernels, which takes minutes; ``--num_warps 8`` pins one launch config and
skips the autotuning). ``--quick`` is a CPU smoke run through the Triton interpreter at toy sizes: it checks that
the pipeline works, its timings mean nothing.

Input precision: the triton backend is given ``q, k, r, eta`` in ``dtype`` (bf16 at paper scale: the kernels cast
loads to fp32; state, gradients and LN statistics are fp32); the torch backend gets them in fp32, as the layer hands
them to it (it computes the scan in its input dtype). Inner matrix products of the kernels run in TF32x3 unless
``torch.set_float32_matmul_precision("high")`` (TF32) is set (``seqmix.kernels.ttt_triton.dot_precision``).
"""

from __future__ import annotations

import gc
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from seqmix.layers import TTTMLP
from seqmix.layers.gated_deltanet import GatedDeltaNet
from seqmix.layers.cost import ttt_minibatch_flops
from seqmix.utils.plots import pyplot, save_figure

from .core import Measurement, fit_exponent, median, torch_threads
from .driver import BenchConfig, PointLoop
from .report import make_doc, markdown_header, write_doc

logger = logging.getLogger(__name__)

__all__ = [
    "PAPER_LENGTHS",
    "TTTKernelBenchConfig",
    "ttt_scan_flops",
    "ttt_scan_bytes",
    "run_ttt_kernel_bench",
    "markdown_table",
    "write_report",
]

SUITE = "ttt-kernels"
MODES = ("fwd", "fwd+bwd")
# fla_gdn: fla's chunked Gated DeltaNet at the same (B, T, H, K), a reference point (seqmix.bench.fla_gdn)
BACKENDS = ("triton", "torch", "fla_gdn")
#: Video tokens of the paper's 3 / 9 / 18 / 30 / 63 s stages (text included where the paper's table does).
PAPER_LENGTHS = [18048, 51456, 99894, 168320, 341550]
#: backend -> the tests gating it (declared on the layer classes).
GATES = {"triton": list(TTTMLP.Tooling.backend_gates["triton"]), "torch": list(TTTMLP.Tooling.gates),
         "fla_gdn": list(GatedDeltaNet.Tooling.gates) + list(GatedDeltaNet.Tooling.backend_gates.get("fla", ()))}


# -------------------------------------------------------------------------------------------------- FLOP counts
def ttt_scan_flops(kind: str, *, causal: bool, batch: int, heads: int, T: int, head_dim: int, inner_dim: int,
                   mini_batch_size: int, mode: str = "fwd", form: str = "kernel") -> float:
    """Matmul FLOPs of a TTT scan over ``T`` tokens (a ragged last mini-batch counts its own tokens), per mini-batch
    :func:`seqmix.layers.cost.ttt_minibatch_flops` in ``form`` (``"kernel"``: the fused Triton kernels; ``"torch"``:
    the PyTorch dual form, which computes the causal read-out with more products).

    ``fwd+bwd`` counts 3x the forward (the backward's two products per forward product), the usual model-FLOP
    convention; the kernels execute more (the backward recomputes every mini-batch's forward once, and the TTT-MLP
    kernels recompute the hidden pre-activation once or twice per pass over the hidden chunks), so the achieved rate
    reported from these counts is a model-FLOP rate.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    full, rem = divmod(T, mini_batch_size)
    per_head = full * ttt_minibatch_flops(kind, mini_batch_size, head_dim, inner_dim, causal, form)
    if rem:
        per_head += ttt_minibatch_flops(kind, rem, head_dim, inner_dim, causal, form)
    return batch * heads * per_head * (3.0 if mode == "fwd+bwd" else 1.0)


def ttt_scan_bytes(kind: str, *, batch: int, heads: int, T: int, head_dim: int, inner_dim: int, in_bytes: int,
                   mode: str = "fwd", n_saved_states: int = 1) -> float:
    """Minimal traffic of the scan: q, k, r, eta read and z written (``in_bytes`` per element), the fp32 initial and
    final state, plus ``n_saved_states`` checkpoints for the backward; ``fwd+bwd`` counts 3x the forward."""
    K, F = head_dim, inner_dim
    state = K * F + F + (F * K + K if kind == "mlp" else 0)
    per_seq = heads * (in_bytes * T * (4 * K + 1) + 4 * state * (2 + n_saved_states))
    return batch * per_seq * (3.0 if mode == "fwd+bwd" else 1.0)


# ------------------------------------------------------------------------------------------------------- config
@dataclass(kw_only=True)
class TTTKernelBenchConfig(BenchConfig):
    """What to measure (defaults: the paper's shapes on one GPU; :meth:`quick_config`: a CPU smoke run).

    Attributes:
        kinds: ``"mlp"`` (TTT-MLP) and / or ``"linear"`` (TTT-Linear).
        lengths: sequence lengths T.
        batch, heads, head_dim: B, H, K.
        mlp_expansion: TTT-MLP hidden width / head dim.
        mini_batch: tokens per inner step, per kind.
        causal: causal (language, dual read-out) or non-causal (video) form.
        modes: ``fwd`` (no grad) and / or ``fwd+bwd``.
        backends: ``triton``, ``torch`` (default both), ``fla_gdn`` (fla chunk Gated DeltaNet, same B, T, H, K).
        dtype: dtype of q, k, r, eta given to the triton backend (the torch backend always gets fp32).
        checkpoint_group: mini-batches per saved state in fwd+bwd (both backends); 0: ~sqrt(#mini-batches).
        num_warps: pin the kernels' launch config (skips autotuning; set before the kernels are first imported).
        device: ``cuda`` (or ``cpu`` under the Triton interpreter for --quick).
        Shared fields (batch, repeats, budgets, threads, peaks, quick, notes):
        :class:`~seqmix.bench.driver.BenchConfig`.
    """

    kinds: list[str] = field(default_factory=lambda: ["mlp", "linear"])
    lengths: list[int] = field(default_factory=lambda: list(PAPER_LENGTHS))
    heads: int = 48
    head_dim: int = 64
    mlp_expansion: int = 4
    mini_batch: dict[str, int] = field(default_factory=lambda: {"mlp": 64, "linear": 16})
    causal: bool = False
    modes: list[str] = field(default_factory=lambda: list(MODES))
    backends: list[str] = field(default_factory=lambda: ["triton", "torch"])
    dtype: str = "bfloat16"
    checkpoint_group: int = 0
    num_warps: int | None = None
    max_seconds_per_point: float = 20.0
    max_call_seconds: float = 60.0
    memory_fraction: float = 0.8
    device: str = "cuda"

    @classmethod
    def quick_config(cls, **kw) -> "TTTKernelBenchConfig":
        """Seconds-long CPU smoke run through the Triton interpreter: T in {24, 40}, 2 heads of dim 16, fp32."""
        base = dict(lengths=[24, 40], heads=2, head_dim=16, mini_batch={"mlp": 8, "linear": 8}, dtype="float32",
                    repeats=1, warmup=0, max_seconds_per_point=5.0, max_call_seconds=30.0, device="cpu", quick=True)
        return cls(**{**base, **kw})

    def inner_dim(self, kind: str) -> int:
        return self.head_dim * (self.mlp_expansion if kind == "mlp" else 1)


@dataclass
class TTTKernelBenchResult:
    records: list[Measurement]
    peaks: dict | None
    config: TTTKernelBenchConfig
    run: object
    notes: list[str]


def _check(cfg: TTTKernelBenchConfig) -> None:
    for name, vals, valid in (("kinds", cfg.kinds, ("mlp", "linear")), ("modes", cfg.modes, MODES),
                              ("backends", cfg.backends, BACKENDS)):
        bad = [v for v in vals if v not in valid]
        if bad or not vals:
            raise ValueError(f"{name} must be a non-empty subset of {valid}, got {vals}")
    if not cfg.lengths or min(cfg.lengths) < 1:
        raise ValueError(f"lengths must be positive, got {cfg.lengths}")
    if not isinstance(getattr(torch, cfg.dtype, None), torch.dtype):
        raise ValueError(f"unknown dtype {cfg.dtype!r}")
    missing = [k for k in cfg.kinds if k not in cfg.mini_batch]
    if missing:
        raise ValueError(f"mini_batch has no size for {missing}")


# ------------------------------------------------------------------------------------------------------- points
def _inputs(cfg: TTTKernelBenchConfig, kind: str, T: int, dtype: torch.dtype, device: torch.device, grad: bool):
    """Scan inputs shaped and scaled as the layer produces them (unit-norm q, k; eta = base_lr sigmoid(.) / K)."""
    g = torch.Generator(device=device).manual_seed(T)
    B, H, K, F = cfg.batch, cfg.heads, cfg.head_dim, cfg.inner_dim(kind)

    def rn(*s, sc=1.0):
        return sc * torch.randn(*s, generator=g, device=device, dtype=torch.float32)

    q = torch.nn.functional.normalize(rn(B, H, T, K), dim=-1)
    k = torch.nn.functional.normalize(rn(B, H, T, K), dim=-1)
    r = rn(B, H, T, K)
    base_lr = 0.1 if kind == "mlp" else 1.0
    eta = (base_lr / K) * torch.sigmoid(rn(B, H, T))
    ln_w, ln_b = torch.ones(H, K, device=device), torch.zeros(H, K, device=device)
    params = [rn(H, K, F, sc=0.02), torch.zeros(H, 1, F, device=device)]
    if kind == "mlp":
        params += [rn(H, F, K, sc=0.02), torch.zeros(H, 1, K, device=device)]
    acts = [t.to(dtype) for t in (q, k, r, eta)]
    leaves = acts + [ln_w, ln_b] + params
    if grad:
        for t in leaves:
            t.requires_grad_()
    return leaves


def _point(cfg: TTTKernelBenchConfig, kind: str, backend: str, mode: str, T: int, device: torch.device):
    """Closure to time one point (inputs are made once, outside the timed calls)."""
    grad = mode == "fwd+bwd"
    dtype = getattr(torch, cfg.dtype) if backend == "triton" else torch.float32
    leaves = _inputs(cfg, kind, T, dtype, device, grad)
    q, k, r, eta, ln_w, ln_b, *params = leaves
    N = cfg.mini_batch[kind]
    if backend == "triton":
        from seqmix.kernels.ttt_triton import ttt_scan_triton as scan
    else:
        from seqmix.ops.ttt import ttt_scan as scan
    n_mb = -(-T // N)
    G = cfg.checkpoint_group if cfg.checkpoint_group > 0 else max(1, math.ceil(math.sqrt(n_mb)))

    def call():
        state = tuple(p.unsqueeze(0).expand(cfg.batch, *p.shape) for p in params)  # as init_state
        return scan(q, k, r, eta, ln_w, ln_b, state, kind=kind, causal=cfg.causal, mini_batch_size=N,
                    checkpoint_group=G if grad else 0)

    if not grad:
        def fn():
            with torch.no_grad():
                return call()
        return fn, G
    dz = torch.randn(cfg.batch, cfg.heads, T, cfg.head_dim, device=device, dtype=q.dtype)

    def fn():
        z, _ = call()
        torch.autograd.backward([z], [dz])
        for t in leaves:
            t.grad = None
    return fn, G


def run_ttt_kernel_bench(cfg: TTTKernelBenchConfig, progress: bool = True,
                         command: str | None = None) -> TTTKernelBenchResult:
    """Measure every (kind, backend, mode, T) point; a point that cannot run is recorded with the reason."""
    _check(cfg)
    with torch_threads(cfg.threads):
        return _run(cfg, progress, command)


def _run(cfg: TTTKernelBenchConfig, progress: bool, command: str | None) -> TTTKernelBenchResult:
    loop = PointLoop(cfg, SUITE, command)
    device, notes = loop.device, list(cfg.notes)
    prec = None
    lengths = sorted(set(cfg.lengths))
    points = [(kd, b, m, T) for kd in cfg.kinds for b in cfg.backends if b != "fla_gdn" for m in cfg.modes
              for T in lengths]
    points += [("gdn", "fla_gdn", m, T) for m in cfg.modes for T in lengths if "fla_gdn" in cfg.backends]
    points.sort(key=lambda p: p[3])  # length-major: a deadline (SEQMIX_BENCH_DEADLINE) cuts the longest T first
    for i, (kind, backend, mode, T) in enumerate(points):
        if progress:
            logger.info("[%d/%d] ttt_%s %s %s T=%d", i + 1, len(points), kind, backend, mode, T)
        if backend == "fla_gdn":
            from .fla_gdn import gdn_record

            gdn_record(loop, mode, T, GATES[backend])
            continue
        K, F, N = cfg.head_dim, cfg.inner_dim(kind), cfg.mini_batch[kind]
        in_dtype = cfg.dtype if backend == "triton" else "float32"
        rec = loop.record(f"ttt_{kind}", mode, T, backend, dtype=in_dtype, gate=list(GATES[backend]), unit="call",
                          tokens_per_unit=T)
        rec.flops = ttt_scan_flops(kind, causal=cfg.causal, batch=cfg.batch, heads=cfg.heads, T=T, head_dim=K,
                                   inner_dim=F, mini_batch_size=N, mode=mode)
        rec.extra = {"heads": cfg.heads, "head_dim": K, "inner_dim": F, "mini_batch_size": N, "causal": cfg.causal,
                     "flops_fwd_per_token_per_head": ttt_minibatch_flops(kind, N, K, F, cfg.causal, "kernel") / N}
        if backend == "triton":
            reason = _triton_reason(kind, K, F, N, getattr(torch, cfg.dtype), device)
            if reason:
                rec.status, rec.reason = "skipped", reason
                continue
            if prec is None:
                from seqmix.kernels.ttt_triton import dot_precision

                prec = dot_precision(device)
            rec.extra["dot_precision"] = prec
        key = (kind, backend, mode)
        if loop.over_budget(rec, key, T, rec.flops):
            continue

        def make(kind=kind, backend=backend, mode=mode, T=T, rec=rec, K=K, F=F, N=N, in_dtype=in_dtype):
            fn, G = _point(cfg, kind, backend, mode, T, device)
            n_mb = -(-T // N)
            rec.bytes = ttt_scan_bytes(kind, batch=cfg.batch, heads=cfg.heads, T=T, head_dim=K, inner_dim=F,
                                       in_bytes=torch.finfo(getattr(torch, in_dtype)).bits // 8, mode=mode,
                                       n_saved_states=-(-n_mb // G) if mode == "fwd+bwd" else 0)
            rec.extra["checkpoint_group"] = G if mode == "fwd+bwd" else None
            return fn

        loop.time(rec, key, T, make, flops=rec.flops, label=f"ttt_{kind}/{backend} {mode} T={T}", cleanup=gc.collect)
    loop.finish(remeasure_peaks=False)
    run, peaks = loop.run, loop.peaks
    if device.type == "cpu":
        notes.append("CPU run: the triton backend runs under the Triton interpreter (~1 ms per program instance per "
                     "operation): a pipeline smoke test, not a measurement.")
    if peaks:
        notes.append("% matmul peak refers to the measured bf16 matmul ceiling; the kernels' products are TF32 / "
                     "TF32x3 on fp32 operands, whose ceiling is lower (H100 TF32 dense ~half the bf16 rate, TF32x3 a "
                     "third of that), so these fractions understate the use of the TF32 units.")
    return TTTKernelBenchResult(loop.records, peaks, cfg, run, notes)


def _triton_reason(kind: str, K: int, F: int, N: int, dtype: torch.dtype, device: torch.device) -> str | None:
    try:
        from seqmix.kernels.ttt_triton import check_supported
    except ImportError as e:
        return f"cannot import the TTT Triton kernels ({e})"
    return check_supported(kind, K, F, N, dtype, device)


# ------------------------------------------------------------------------------------------------------ reports
def summarize(ms: list[Measurement]) -> dict:
    ok = [m for m in ms if m.ok]
    ratios = []
    for name, mode, T in sorted({(m.name, m.mode, m.T) for m in ok}):
        by = {m.backend: m for m in ok if (m.name, m.mode, m.T) == (name, mode, T)}
        if "triton" in by and "torch" in by:
            ratios.append({"name": name, "mode": mode, "T": T,
                           "speedup_triton_vs_torch": by["torch"].median_s / by["triton"].median_s,
                           "memory_ratio_triton_vs_torch": (by["triton"].peak_bytes / by["torch"].peak_bytes
                                                            if by["triton"].peak_bytes and by["torch"].peak_bytes
                                                            else None)})
    exps = []
    for name, backend, mode in sorted({(m.name, m.backend, m.mode) for m in ok}):
        pts = sorted((m for m in ok if (m.name, m.backend, m.mode) == (name, backend, mode)), key=lambda m: m.T)
        exps.append({"name": name, "backend": backend, "mode": mode, "fit_T": [m.T for m in pts],
                     "time_exponent": fit_exponent([m.T for m in pts], [m.median_s for m in pts])})
    gdn = {(m.mode, m.T): m for m in ok if m.backend == "fla_gdn"}
    vs_gdn = [{"name": m.name, "backend": m.backend, "mode": m.mode, "T": m.T,
               "time_ratio_vs_fla_gdn": m.median_s / gdn[(m.mode, m.T)].median_s}
              for m in ok if m.backend != "fla_gdn" and (m.mode, m.T) in gdn]
    return {"ratios": ratios, "exponents": exps, "vs_fla_gdn": vs_gdn}


def _f(x, fmt: str) -> str:
    return "" if x is None or x != x else format(x, fmt)


def markdown_table(res: TTTKernelBenchResult | list[Measurement]) -> str:
    ms = res.records if isinstance(res, TTTKernelBenchResult) else res
    s = summarize(ms)
    lines = ["## Measurements", "",
             "time = median per call over T tokens (all heads); TFLOP/s from the scan's matmul FLOPs "
             "(`ttt_scan_flops`, fwd+bwd = 3x fwd).", "",
             "| layer | backend | mode | T | input dtype | time (ms) | tokens/s | peak mem (MB) | GFLOP | TFLOP/s | "
             "% bf16 matmul peak |",
             "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for m in sorted((m for m in ms if m.ok), key=lambda m: (m.name, m.mode, m.backend, m.T)):
        lines.append(f"| {m.name} | {m.backend} | {m.mode} | {m.T} | {m.dtype} | {m.median_s * 1e3:.4g} | "
                     f"{m.tokens_per_s:,.0f} | {_f(m.peak_bytes and m.peak_bytes / 2**20, '.1f')} | "
                     f"{_f(m.flops and m.flops / 1e9, '.4g')} | "
                     f"{_f(m.achieved_flops_per_s and m.achieved_flops_per_s / 1e12, '.3g')} | "
                     f"{_f(m.frac_matmul_peak and 100 * m.frac_matmul_peak, '.1f')} |")
    if s["ratios"]:
        lines += ["", "## triton vs torch (same run)", "",
                  "| layer | mode | T | speed-up (torch time / triton time) | peak memory triton / torch |",
                  "|---|---|---:|---:|---:|"]
        for r in s["ratios"]:
            lines.append(f"| {r['name']} | {r['mode']} | {r['T']} | {r['speedup_triton_vs_torch']:.2f} | "
                         f"{_f(r['memory_ratio_triton_vs_torch'], '.3f')} |")
    if s["vs_fla_gdn"]:
        lines += ["", "## vs fla chunk Gated DeltaNet at the same (B, T, H, K) (same run)", "",
                  "| layer | backend | mode | T | time / Gated DeltaNet time |", "|---|---|---|---:|---:|"]
        for r in s["vs_fla_gdn"]:
            lines.append(f"| {r['name']} | {r['backend']} | {r['mode']} | {r['T']} | "
                         f"{r['time_ratio_vs_fla_gdn']:.2f} |")
    bad = [m for m in ms if not m.ok]
    if bad:
        lines += ["", "## Not measured", "", "| layer | backend | mode | T | status | reason |",
                  "|---|---|---|---:|---|---|"]
        for m in bad:
            lines.append(f"| {m.name} | {m.backend} | {m.mode} | {m.T} | {m.status} | {m.reason} |")
    lines += ["", "Correctness gates: " + "; ".join(f"{b}: `{' '.join(g)}`" for b, g in GATES.items())]
    return "\n".join(lines)


def plot(ms: list[Measurement], path: Path, title: str = "") -> Path | None:
    plt = pyplot(path)
    ok = [m for m in ms if m.ok]
    if plt is None or not ok:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for name, backend, mode in sorted({(m.name, m.backend, m.mode) for m in ok}):
        pts = sorted((m for m in ok if (m.name, m.backend, m.mode) == (name, backend, mode)), key=lambda m: m.T)
        label = f"{name} {backend} {mode}"
        ls = "-" if backend == "triton" else "--"
        axes[0].plot([m.T for m in pts], [m.tokens_per_s for m in pts], ls, marker="o", ms=3, label=label)
        mem = [(m.T, m.peak_bytes / 2**20) for m in pts if m.peak_bytes]
        if mem:
            axes[1].plot(*zip(*mem), ls, marker="o", ms=3, label=label)
    for ax, yl in zip(axes, ("tokens/s", "peak memory (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T (tokens)")
        ax.set_ylabel(yl)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    return save_figure(fig, path, title=title, dpi=110)


def write_report(res: TTTKernelBenchResult, out_dir: str | Path) -> dict:
    """Write ``results.json`` (``seqmix.bench/v2``, suite ``ttt-kernels``, validated as every suite's), ``results.md``
    and ``results.png``; returns the paths and the document."""
    cfg, run = res.config, res.run
    gates = {f"ttt_{k}": sorted({g for b in cfg.backends if b != "fla_gdn" for g in GATES[b]}) for k in cfg.kinds}
    if "fla_gdn" in cfg.backends:
        gates["gated_deltanet"] = GATES["fla_gdn"]
    doc = make_doc(SUITE, run, cfg, res.records, summarize(res.records), res.peaks, gates, res.notes)
    sizes = (f"B={cfg.batch}, H={cfg.heads}, K={cfg.head_dim}, TTT-MLP hidden {cfg.head_dim * cfg.mlp_expansion}, "
             f"mini-batch {cfg.mini_batch}, {'causal' if cfg.causal else 'non-causal'} form; triton inputs "
             f"{cfg.dtype}, torch inputs float32; median of up to {cfg.repeats} timed calls after {cfg.warmup} "
             "warm-up.\n\n")
    md = markdown_header("TTT kernel benchmark (scan only: triton vs torch)", doc) + sizes + markdown_table(res) + "\n"
    dev = run.machine.get("gpu") or run.machine.get("cpu_model")
    paths = write_doc(doc, out_dir, md, lambda p: plot(res.records, p, f"TTT scan on {dev} (B={cfg.batch}, "
                                                       f"H={cfg.heads}, K={cfg.head_dim})"))
    paths["doc"] = doc
    return paths
