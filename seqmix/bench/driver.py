"""What every benchmark suite shares: the config fields, and the point loop around one run (run info, machine
ceilings, the series budget, one record per point, timing with its failure bookkeeping, roofline fractions).

A suite (:mod:`seqmix.bench.layers`, :mod:`seqmix.bench.dit`, :mod:`seqmix.bench.ttt_kernels`) subclasses
:class:`BenchConfig`, builds its points, and for each calls :meth:`PointLoop.record`, :meth:`PointLoop.over_budget`
and :meth:`PointLoop.time`; :meth:`PointLoop.finish` adds the roofline fractions. Reports go through
:mod:`seqmix.bench.report` (one validated document layout for every suite).
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, field
from typing import Callable

import torch

from seqmix import layers as L

from .core import (Measurement, SeriesBudget, combine_peaks, measure, measure_peaks, median, memory_budget,
                   record_failure, roofline)
from .report import RunInfo, start_run

logger = logging.getLogger(__name__)

__all__ = ["BenchConfig", "PointLoop", "machine_notes", "mixer_bench_config", "SIZES"]

#: Benchmark size presets of a layer -> the :class:`~seqmix.layers.Mixer` class attribute that holds its config
#: fields for that preset ("defaults": none, the config defaults, i.e. the paper's sizes).
SIZES = {"defaults": None, "bench": "bench_config", "quick": "bench_quick_config", "paper": "bench_paper_config"}


@dataclass(kw_only=True)
class BenchConfig:
    """Fields every suite shares (a suite's config subclasses this and may change a default).

    Attributes:
        batch: sequences per call.
        repeats, warmup: timed and untimed calls per point (median reported).
        max_seconds_per_point: stop repeating once this many timed seconds are spent.
        max_call_seconds: skip points predicted to take longer per call (and the longer sizes of the series).
        memory_fraction: skip points predicted to use more than this fraction of free memory.
        device, dtype: where and in what precision to run (``cpu``, ``cuda``; ``float32``, ``bfloat16``, ...).
        threads: torch CPU threads (1 gives steadier timings on a shared machine; None: torch's default).
        peaks: measure the matmul / copy ceilings (at the start and the end, keeping the best).
        quick: a smoke run (CI): tiny sizes, numbers not meaningful.
        notes: free-text caveats stored with the results.
    """

    batch: int = 1
    repeats: int = 3
    warmup: int = 1
    max_seconds_per_point: float = 10.0
    max_call_seconds: float = 30.0
    memory_fraction: float = 0.6
    device: str = "cpu"
    dtype: str = "float32"
    threads: int | None = None
    peaks: bool = True
    quick: bool = False
    notes: list[str] = field(default_factory=list)


class PointLoop:
    """One run of a suite: ``records`` (one per point, skips and errors included), ``peaks``, ``run`` info."""

    def __init__(self, cfg: BenchConfig, suite: str, command: str | None = None):
        self.cfg, self.suite = cfg, suite
        self.run: RunInfo = start_run(cfg.device, command)
        self.device = torch.device(cfg.device)
        self.peaks = measure_peaks(self.device, quick=cfg.quick) if cfg.peaks else None
        self.memory_method = "cuda-max-allocated" if self.device.type == "cuda" else "tensor-accounting"
        self.series = SeriesBudget(cfg.max_call_seconds, memory_budget(self.device, cfg.memory_fraction))
        self.records: list[Measurement] = []

    def record(self, name: str, mode: str, T: int, backend: str, **fields) -> Measurement:
        """A new record of this run (status ``ok`` until a skip or failure says otherwise)."""
        fields.setdefault("dtype", self.cfg.dtype)
        rec = Measurement(suite=self.suite, name=name, mode=mode, T=T, batch=self.cfg.batch, median_s=None,
                          tokens_per_s=None, peak_bytes=None, backend=backend, device=str(self.device),
                          memory_method=self.memory_method, **fields)
        self.records.append(rec)
        return rec

    def over_budget(self, rec: Measurement, key: tuple, size: int, flops: float | None) -> bool:
        """Mark ``rec`` skipped (and the longer sizes of its series) if the budget predicts it too slow / large."""
        why = self.series.check(key, size, flops)
        if not why:
            return False
        rec.status, rec.reason = "skipped", why
        if not why.startswith("a shorter"):
            self.series.kill(key, size, why)
        return True

    def time(self, rec: Measurement, key: tuple, size: int, make_fn: Callable[[], Callable[[], object]], *,
             flops: float | None, label: str, calls: int = 1, tokens_per_unit: int | None = None,
             cleanup: Callable[[], None] | None = None, memory: bool = True) -> bool:
        """Time ``make_fn()`` (built inside the failure bookkeeping) and fill ``rec``; False if it failed.

        ``calls``: units (tokens, frames) per timed call; ``tokens_per_unit``: tokens per unit for tokens/s
        (default ``rec.tokens_per_unit``). ``cleanup`` runs after the point, success or not. ``memory``: record
        the peak (see :func:`~seqmix.bench.core.measure`)."""
        fn = None
        try:
            fn = make_fn()
            times, peak = measure(fn, repeats=self.cfg.repeats, warmup=self.cfg.warmup, device=self.device,
                                  max_seconds=self.cfg.max_seconds_per_point, memory=memory)
        except Exception as e:  # noqa: BLE001 - record and go on with the other points
            if not record_failure(rec, e, self.series, key, size):
                logger.warning("%s failed: %s", label, rec.reason)
            return False
        finally:
            fn = None  # noqa: F841 - drop the closure (inputs, states) before the next point
            if cleanup is not None:
                cleanup()
            if self.device.type == "cuda":
                gc.collect()
                torch.cuda.empty_cache()
        unit_times = [t / calls for t in times]
        rec.times_s = unit_times
        rec.median_s = median(unit_times)
        rec.tokens_per_s = self.cfg.batch * (tokens_per_unit or rec.tokens_per_unit) / rec.median_s
        rec.peak_bytes = None if peak is None else int(peak)
        rec.extra["repeats"] = len(times)
        self.series.record(key, size, median(times), rec.peak_bytes, flops)
        return True

    def finish(self, remeasure_peaks: bool = True) -> None:
        """Ceilings again at the end (keeping the best of both samples: load from other processes), then every
        record's roofline fractions."""
        if self.cfg.peaks and remeasure_peaks:
            self.peaks = combine_peaks(self.peaks, measure_peaks(self.device, quick=self.cfg.quick))
        for rec in self.records:
            roofline(rec, self.peaks)


def mixer_bench_config(name: str, sizes: str, overrides: dict[str, dict]) -> dict:
    """Config fields of registry layer ``name`` in a benchmark run: what its class declares for the preset
    ``sizes`` (a key of :data:`SIZES`), then the run's own ``overrides[name]`` on top."""
    if sizes not in SIZES:
        raise ValueError(f"unknown layer sizes preset {sizes!r}; choose one of {', '.join(SIZES)}")
    attr = SIZES[sizes]
    return {**(getattr(L.mixer_class(name).Tooling, attr) if attr else {}), **overrides.get(name, {})}


def machine_notes(loop: PointLoop) -> list[str]:
    """Caveats every CPU suite states: a thread limit, a shared machine."""
    cfg, run, notes = loop.cfg, loop.run, []
    cores = run.machine.get("cpu_count") or 1
    if loop.device.type == "cpu" and cfg.threads and cfg.threads < cores:
        notes.append(f"torch limited to {cfg.threads} thread(s) of {run.machine.get('cpu_count')} cores: on a shared "
                     "machine oversubscribed OpenMP threads made timings 10-100x noisier; the matmul / copy "
                     "ceilings were measured with the same setting.")
    return notes
