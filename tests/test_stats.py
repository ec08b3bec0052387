"""Seed aggregation: intervals computed right on known inputs."""

import math

import pytest

from seqmix.utils.stats import SeedSummary, separated, summarize, t_quantile_975


def test_t_interval_on_known_values():
    s = summarize([1.0, 2.0, 3.0])  # mean 2, sd 1, se 1/sqrt(3), t_{0.975,2} = 4.302653
    assert s.interval == "t95" and s.n == 3
    half = 4.302653 / math.sqrt(3)
    assert s.mean == pytest.approx(2.0) and s.low == pytest.approx(2 - half) and s.high == pytest.approx(2 + half)
    s = summarize([0.5] * 5)
    assert (s.low, s.mean, s.high) == pytest.approx((0.5, 0.5, 0.5))


def test_two_seeds_give_min_max_and_one_seed_the_value():
    s = summarize([0.7, 0.3])
    assert (s.interval, s.low, s.mean, s.high) == ("minmax", 0.3, pytest.approx(0.5), 0.7)
    s = summarize([0.25])
    assert (s.interval, s.low, s.high) == ("single", 0.25, 0.25)
    assert s.format() == "0.250" and summarize([0.3, 0.7]).format() == "0.500 [0.300, 0.700]"


def test_t_quantiles_table_and_expansion():
    assert t_quantile_975(1) == pytest.approx(12.706205)
    assert t_quantile_975(10) == pytest.approx(2.228139)
    # Beyond the table: known values t_{0.975,40} = 2.021075, t_{0.975,120} = 1.979930.
    assert t_quantile_975(40) == pytest.approx(2.021075, abs=2e-4)
    assert t_quantile_975(120) == pytest.approx(1.979930, abs=1e-4)
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_quantile_975(0)


def test_separation_needs_disjoint_intervals():
    a, b = summarize([0.1, 0.2, 0.15]), summarize([0.8, 0.9, 0.85])
    assert separated(a, b) and separated(b, a)
    assert not separated(summarize([0.1, 0.5]), summarize([0.4, 0.9]))
    assert not separated(summarize([0.1]), summarize([0.9])), "one seed never separates"


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least one"):
        summarize([])
    with pytest.raises(ValueError, match="non-finite"):
        summarize([1.0, float("nan")])
    assert isinstance(summarize([1, 2, 3]), SeedSummary)
