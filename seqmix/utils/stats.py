"""Aggregation over seeds: a mean with a 95% interval, and whether two results are told apart.

Comparisons run every configuration with ``S`` seeds. For ``S >= 3`` the interval is Student's t interval of
the mean, ``mean +- t_{0.975, S-1} * sd / sqrt(S)`` (``sd`` with Bessel's correction); with ``S = 2`` a t
interval is too wide to say anything (``t_{0.975, 1} = 12.7``), so the interval is the observed min-max and
is labelled as such; with one seed it is the value itself.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

__all__ = ["SeedSummary", "summarize", "separated", "t_quantile_975"]

# t_{0.975, df} for df = 1..30 (two-sided 95%); beyond 30 the Cornish-Fisher expansion below is within 1e-4.
_T975 = (
    12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
    2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
    2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272,
)


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df >= 1`` degrees of freedom."""
    if not isinstance(df, int) or df < 1:
        raise ValueError(f"degrees of freedom must be an int >= 1, got {df!r}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class SeedSummary:
    """One metric over ``n`` seeds: ``mean`` and the interval ``[low, high]`` of kind ``interval``
    (``"t95"``: 95% t interval of the mean; ``"minmax"``: observed range, for 2 seeds; ``"single"``)."""

    mean: float
    low: float
    high: float
    n: int
    interval: str

    def as_dict(self) -> dict:
        return asdict(self)

    def format(self, fmt: str = "{:.3f}") -> str:
        """``"0.512 [0.470, 0.554]"`` (or just the value for one seed)."""
        if self.n == 1:
            return fmt.format(self.mean)
        return f"{fmt.format(self.mean)} [{fmt.format(self.low)}, {fmt.format(self.high)}]"


def summarize(values: Sequence[float]) -> SeedSummary:
    """Mean and interval of one metric over seeds (see the module docstring for the interval used)."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("summarize needs at least one value")
    if not all(math.isfinite(x) for x in xs):
        raise ValueError(f"summarize got a non-finite value: {xs}")
    n = len(xs)
    mean = sum(xs) / n
    if n == 1:
        return SeedSummary(mean, mean, mean, 1, "single")
    if n == 2:
        return SeedSummary(mean, min(xs), max(xs), 2, "minmax")
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return SeedSummary(mean, mean - half, mean + half, n, "t95")


def separated(a: SeedSummary, b: SeedSummary) -> bool:
    """True when the two intervals do not overlap (a ranking statement is then allowed); never for one seed."""
    if a.n < 2 or b.n < 2:
        return False
    return a.high < b.low or b.high < a.low
