"""Benchmark machinery: timing, memory, growth-exponent fits, cost model, records and reports.

Benchmarks never assert speed; they measure ratios in one run and store them as data (JSON, schema
``seqmix.bench/v2``, see ``benchmarks/SCHEMA.md`` and :func:`validate`), a markdown table and plots. Suites:

* :mod:`seqmix.bench.layers` - every registry layer and backend against T: fwd, fwd+bwd, decode, decode-frame,
  with analytic FLOPs / bytes (:mod:`seqmix.bench.costs`) and fractions of the measured matmul / copy ceilings;
* :mod:`seqmix.bench.dit` - the video DiT's efficiency study (relative cost of each global layer at 3..63 s);
* :mod:`seqmix.bench.ttt_kernels` - the fused TTT Triton scan against the PyTorch scan.

Every suite runs on the shared driver (:mod:`seqmix.bench.driver`: config base class, point loop, failure
records) and writes one validated document layout (:mod:`seqmix.bench.report`). Each entry names the correctness tests that gate it (:mod:`seqmix.bench.gates`).
"""

from .core import Measurement, fit_exponent, machine_info, measure_peaks, time_call
from .schema import SCHEMA_VERSION, SchemaError, flat_records, validate

__all__ = ["Measurement", "fit_exponent", "machine_info", "measure_peaks", "time_call", "SCHEMA_VERSION",
           "SchemaError", "flat_records", "validate"]
