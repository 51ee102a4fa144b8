"""Percentiles interpolate between order statistics as numpy's default method does."""

from __future__ import annotations

import numpy as np
import pytest

from sdrt.bench.stats import Summary, percentile


def test_percentiles_of_known_values():
    values = [5.0, 1.0, 4.0, 2.0, 3.0]  # order does not matter
    assert percentile(values, 50) == 3.0
    assert percentile(values, 90) == pytest.approx(4.6)
    assert percentile(values, 99) == pytest.approx(4.96)
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 5.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0], 50) == 1.5  # an even count's median is the mean of the middle two


def test_percentiles_match_numpy():
    rng = np.random.default_rng(0)
    values = rng.exponential(size=37).tolist()
    for q in (0, 10, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_summary_and_bad_input():
    s = Summary.of([0.2, 0.1, 0.4, 0.3])
    assert (s.median, s.min, s.max, s.n) == (pytest.approx(0.25), 0.1, 0.4, 4)
    assert s.p90 == pytest.approx(0.37) and s.p99 == pytest.approx(0.397)
    assert set(s.to_json()) == {"median", "p90", "p99", "min", "max", "n"}
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="outside 0..100"):
        percentile([1.0], 101)
