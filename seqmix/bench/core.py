"""Shared benchmark helpers."""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

__all__ = ["Measurement", "time_call", "fit_exponent", "machine_info"]


@dataclass
class Measurement:
    """One benchmark measurement (one JSON record)."""

    suite: str
    name: str  # layer or model name
    mode: str  # "fwd", "fwd+bwd", ...
    T: int
    batch: int
    median_s: float
    tokens_per_s: float
    peak_bytes: int
    backend: str = ""
    dtype: str = "float32"
    device: str = "cpu"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1, device="cpu",
              max_seconds: float | None = None) -> list[float]:
    """Wall-clock seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs (device-synchronised).

    Stops early (with at least one timed run) once ``max_seconds`` of timed runs have been spent.
    """
    device = torch.device(device)
    for _ in range(warmup):
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
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def fit_exponent(ts: list[int], ys: list[float]) -> float:
    """Least-squares slope of log(y) against log(T): ~1 for linear cost, ~2 for quadratic."""
    pts = [(math.log(t), math.log(y)) for t, y in zip(ts, ys) if y > 0]
    if len(pts) < 2:
        return float("nan")
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    sxy = sum((p[0] - mx) * (p[1] - my) for p in pts)
    return sxy / sxx if sxx > 0 else float("nan")


def machine_info(device: torch.device | str = "cpu") -> dict:
    device = torch.device(device)
    info = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:  # pragma: no cover - triton is a dependency on Linux
        pass
    return info
