"""Benchmark machinery: timing, memory, growth-exponent fits, records and reports.

Benchmarks never assert speed; they measure ratios in one run and store them as data (JSON), a markdown table
and plots. Suites: :mod:`seqmix.bench.layers` (every registry layer against sequence length).
"""

from .core import Measurement, fit_exponent, machine_info, time_call

__all__ = ["Measurement", "fit_exponent", "machine_info", "time_call"]
