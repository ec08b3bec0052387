"""Shared benchmark machinery: records, timing, peak memory, growth-exponent fits, machine info and the measured
matmul / memory-bandwidth peaks that the roofline fractions refer to.

Timing: ``warmup`` untimed calls, then up to ``repeats`` timed calls (device-synchronised); the median is reported
and every timed value is kept in the record. Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over one call
(minus what was allocated before it); on CPU the live-tensor accounting of
:class:`seqmix.utils.memory.TensorMemoryTracker`, taken during the first warm-up call (so it costs no extra call).
"""

from __future__ import annotations

import gc
import importlib.metadata
import logging
import math
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from seqmix.utils.memory import TensorMemoryTracker

logger = logging.getLogger(__name__)

__all__ = [
    "Measurement",
    "time_call",
    "measure",
    "median",
    "fit_exponent",
    "machine_info",
    "versions",
    "measure_peaks",
    "is_oom",
    "record_failure",
    "memory_budget",
    "roofline",
    "combine_peaks",
    "torch_threads",
    "SeriesBudget",
]

@dataclass
class Measurement:
    """One benchmark measurement: one JSON record of the ``seqmix.bench/v2`` schema (see ``benchmarks/SCHEMA.md``).

    ``median_s`` is the median time of one *unit* (``unit``: ``"call"`` for a forward / forward+backward over
    ``T`` tokens, ``"token"`` for one decode step, ``"frame"`` for one decode call of ``tokens_per_unit`` tokens);
    ``flops`` and ``bytes`` are the analytic cost-model estimates of one unit (:mod:`seqmix.bench.costs`).
    A point that was not measured has ``status`` ``"skipped"`` or ``"error"`` and says why in ``reason``.
    """

    suite: str
    name: str  # layer or model variant
    mode: str  # "fwd", "fwd+bwd", "decode", "decode-frame"
    T: int  # sequence length (decode: context length before the timed steps)
    batch: int
    median_s: float | None
    tokens_per_s: float | None
    peak_bytes: int | None
    backend: str = ""
    dtype: str = "float32"
    device: str = "cpu"
    extra: dict = field(default_factory=dict)
    status: str = "ok"
    reason: str | None = None
    backend_used: str | None = None
    unit: str = "call"
    tokens_per_unit: int | None = None
    times_s: list[float] = field(default_factory=list)
    memory_method: str = ""
    flops: float | None = None
    bytes: float | None = None
    achieved_flops_per_s: float | None = None
    frac_matmul_peak: float | None = None
    achieved_bytes_per_s: float | None = None
    frac_bandwidth: float | None = None
    frac_roofline: float | None = None
    gate: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1, device="cpu",
              max_seconds: float | None = None) -> list[float]:
    """Wall-clock seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs (device-synchronised).

    Stops early (with at least one timed run) once ``max_seconds`` of timed runs have been spent.
    """
    times, _ = measure(fn, repeats=repeats, warmup=warmup, device=device, max_seconds=max_seconds, memory=False)
    return times


def measure(fn: Callable[[], object], *, repeats: int = 3, warmup: int = 1, device="cpu",
            max_seconds: float | None = None, memory: bool = True) -> tuple[list[float], int | None]:
    """``(timed seconds of fn(), peak bytes of one call or None)``.

    CPU: the first warm-up call runs under :class:`TensorMemoryTracker` (one extra call if ``warmup == 0``).
    CUDA: one extra call after the timed ones, between ``reset_peak_memory_stats`` and ``max_memory_allocated``.
    """
    device = torch.device(device)
    peak = None
    tracked = False  # CPU: the accounting was tried (it fails on calls that build tensor subclasses)
    for i in range(warmup):
        if i == 0 and memory and device.type != "cuda":
            peak, tracked = _tracked_call(fn), True
        else:
            fn()
    _sync(device)
    times: list[float] = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        if max_seconds is not None and sum(times) > max_seconds:
            break
    if memory and peak is None and not tracked:
        if device.type == "cuda":
            gc.collect()
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            fn()
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device) - base
        else:
            peak = _tracked_call(fn)
    return times, peak


def _tracked_call(fn: Callable[[], object]) -> int | None:
    """Peak live-tensor bytes of one ``fn()`` call (CPU accounting), or None (after a plain call) when the
    accounting cannot follow the call: e.g. SDPA's ``CausalBias`` tensor subclass (KV-cache attention) cannot be
    created under a ``TorchDispatchMode``."""
    try:
        with TensorMemoryTracker() as m:
            fn()
        return m.peak_bytes
    except RuntimeError as e:
        if "subclass" not in str(e):
            raise
        logger.debug("tensor accounting failed (%s); peak memory not recorded", e)
        fn()
        return None


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def fit_exponent(ts: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) against log(T): ~1 for linear cost, ~2 for quadratic (NaN if < 2 points)."""
    pts = [(math.log(t), math.log(y)) for t, y in zip(ts, ys) if y is not None and y > 0 and t > 0]
    if len(pts) < 2:
        return float("nan")
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    sxy = sum((p[0] - mx) * (p[1] - my) for p in pts)
    return sxy / sxx if sxx > 0 else float("nan")


def is_oom(e: BaseException) -> bool:
    """True for an out-of-memory error of any device."""
    if isinstance(e, MemoryError):
        return True
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(e, oom):
        return True
    return isinstance(e, RuntimeError) and ("out of memory" in str(e).lower() or "can't allocate" in str(e).lower())


def record_failure(rec: "Measurement", e: BaseException, series: "SeriesBudget", key: tuple, size: int) -> bool:
    """Mark ``rec`` skipped (out of memory) or errored by ``e``, stop its series at ``size``; True if OOM."""
    oom = is_oom(e)
    rec.status = "skipped" if oom else "error"
    rec.reason = ("out of memory: " if oom else f"{type(e).__name__}: ") + str(e).splitlines()[0][:300]
    series.kill(key, size, rec.reason)
    return oom


def memory_budget(device: torch.device | str, fraction: float = 0.6) -> int:
    """Bytes a benchmark point may use: ``fraction`` of free GPU memory, or of available RAM on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(fraction * free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(fraction * int(line.split()[1]) * 1024)
    except OSError:
        pass
    return int(fraction * 8 * 2**30)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def versions() -> dict:
    """Versions of Python, torch and every optional library a backend may use (None where not installed)."""
    out = {"python": sys.version.split()[0], "torch": torch.__version__}
    for dist in ("seqmix", "triton", "fla-core", "flash-linear-attention", "mamba-ssm", "flash-attn", "causal-conv1d",
                 "numpy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def machine_info(device: torch.device | str = "cpu") -> dict:
    """The machine a run used: CPU model, cores, threads, memory, device (GPU name), load average, versions."""
    device = torch.device(device)
    info = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_bytes": _mem_total(),
        "device": str(device),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_bytes"] = torch.cuda.get_device_properties(device).total_memory
        info["cuda"] = torch.version.cuda
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:  # pragma: no cover - triton is a dependency on Linux
        pass
    return info


def measure_peaks(device: torch.device | str = "cpu", *, quick: bool = False, repeats: int = 5) -> dict:
    """Measured roofline ceilings of this machine, in the same run as the benchmark.

    * matmul: the best of ``repeats`` square matrix products at two sizes (CPU: fp32, n = 1024 and 2048; CUDA: bf16,
      n = 4096 and 8192), in FLOP/s.
    * copy: the best of ``repeats`` device copies of a large buffer (CPU 256 MiB, CUDA 2 GiB; read + write counted),
      in bytes/s.
    ``quick`` uses small sizes (CI smoke runs; the numbers are then only indicative).
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    mm = None
    for n in ((4096, 8192) if cuda else (1024, 2048)) if not quick else (512,):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        times = time_call(lambda: a @ b, repeats=repeats, warmup=2, device=device)
        if mm is None or 2 * n**3 / min(times) > mm["flops_per_s"]:
            mm = {"dtype": str(dtype).replace("torch.", ""), "n": n, "best_s": min(times),
                  "flops_per_s": 2 * n**3 / min(times)}
        del a, b
    nbytes = (2 * 2**30 if cuda else 256 * 2**20) if not quick else 16 * 2**20
    src = torch.empty(nbytes // 4, device=device, dtype=torch.float32).normal_()
    dst = torch.empty_like(src)
    times = time_call(lambda: dst.copy_(src), repeats=repeats, warmup=2, device=device)
    cp = {"buffer_bytes": nbytes, "best_s": min(times), "bytes_per_s": 2 * nbytes / min(times)}
    del src, dst
    if cuda:
        torch.cuda.empty_cache()
    return {"matmul": mm, "copy": cp, "quick": quick}


def combine_peaks(*samples: dict | None) -> dict | None:
    """The best ceilings over several :func:`measure_peaks` samples (e.g. at the start and the end of a run, so
    that a burst of load from other processes during one sample does not lower the ceiling); every sample kept."""
    samples = [s for s in samples if s]
    if not samples:
        return None
    best_mm = max((s["matmul"] for s in samples), key=lambda m: m["flops_per_s"])
    best_cp = max((s["copy"] for s in samples), key=lambda c: c["bytes_per_s"])
    return {"matmul": dict(best_mm), "copy": dict(best_cp), "quick": any(s.get("quick") for s in samples),
            "samples": [{"matmul_flops_per_s": s["matmul"]["flops_per_s"], "copy_bytes_per_s": s["copy"]["bytes_per_s"]}
                        for s in samples]}


def roofline(m: Measurement, peaks: dict | None) -> None:
    """Fill the achieved rates and the fractions of the measured peaks into ``m`` (in place) from its cost model."""
    if not m.ok or not m.median_s:
        return
    if m.flops is not None:
        m.achieved_flops_per_s = m.flops / m.median_s
    if m.bytes is not None:
        m.achieved_bytes_per_s = m.bytes / m.median_s
    if not peaks:
        return
    pf, pb = peaks["matmul"]["flops_per_s"], peaks["copy"]["bytes_per_s"]
    if m.achieved_flops_per_s is not None:
        m.frac_matmul_peak = m.achieved_flops_per_s / pf
    if m.achieved_bytes_per_s is not None:
        m.frac_bandwidth = m.achieved_bytes_per_s / pb
    if m.flops is not None and m.bytes is not None:
        # time an ideal kernel needs at the measured ceilings, over the time measured
        m.frac_roofline = max(m.flops / pf, m.bytes / pb) / m.median_s


@contextmanager
def torch_threads(n: int | None):
    """Run the block with ``torch.set_num_threads(n)`` (``None``: unchanged), restoring the previous setting."""
    prev = torch.get_num_threads()
    if n is not None:
        if n < 1:
            raise ValueError(f"threads must be >= 1, got {n}")
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


class SeriesBudget:
    """Skip logic for a series of points of growing size (one layer / backend / mode, or one DiT variant / mode).

    Before a point: :meth:`check` predicts its single-call time from the last measured point of the series scaled
    by the cost-model FLOP ratio (or the size ratio), and its peak memory from the last one or two points; a
    prediction over budget skips it. After a skip or a failure (:meth:`kill`) every larger point of the series is
    skipped too. After a measured point: :meth:`record`.

    A whole-run deadline, ``SEQMIX_BENCH_DEADLINE`` (Unix time, seconds), skips every point that would start after
    it: a caller with a fixed time window (``scripts/gpu_check.sh``) still gets a complete results document.
    """

    def __init__(self, max_call_seconds: float, memory_bytes: int):
        self.max_call_seconds, self.memory_bytes = max_call_seconds, memory_bytes
        deadline = os.environ.get("SEQMIX_BENCH_DEADLINE")
        self.deadline = float(deadline) if deadline else None
        self._last: dict[tuple, tuple[int, float, int | None, float | None]] = {}  # size, call s, peak, flops
        self._prev_peak: dict[tuple, tuple[int, int | None]] = {}
        self._dead: dict[tuple, str] = {}

    def check(self, key: tuple, size: int, flops: float | None = None) -> str | None:
        """Why the point ``size`` of series ``key`` should be skipped, or None."""
        if self.deadline is not None and time.time() > self.deadline:
            return "over the run's wall-clock budget (SEQMIX_BENCH_DEADLINE)"
        if key in self._dead:
            return f"a shorter length of this series was skipped or failed ({self._dead[key]})"
        if key not in self._last:
            return None
        T0, call_s, peak, flops0 = self._last[key]
        ratio = (flops / flops0) if flops and flops0 else size / T0
        pred = call_s * max(ratio, 1.0)
        if pred > self.max_call_seconds:
            return (f"predicted {pred:.1f} s per call > budget {self.max_call_seconds:.0f} s "
                    f"(from T={T0}: {call_s:.2f} s)")
        if peak:
            e = 1.0
            Tp, pp = self._prev_peak.get(key, (None, None))
            if pp and Tp < T0:
                e = min(max(fit_exponent([Tp, T0], [pp, peak]), 1.0), 2.0)
            pred_mem = peak * (size / T0) ** e
            if pred_mem > self.memory_bytes:
                return (f"predicted peak memory {pred_mem / 2**30:.1f} GiB > budget "
                        f"{self.memory_bytes / 2**30:.1f} GiB")
        return None

    def kill(self, key: tuple, size: int, reason: str) -> None:
        self._dead.setdefault(key, f"T={size}: {reason}")

    def record(self, key: tuple, size: int, call_seconds: float, peak: int | None, flops: float | None) -> None:
        if key in self._last:
            T0, _, p0, _ = self._last[key]
            self._prev_peak[key] = (T0, p0)
        self._last[key] = (size, call_seconds, peak, flops)
