"""Order statistics over timed runs: median, p90, p99."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), interpolating linearly between order statistics (numpy's default method)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    """Distribution of one measure over the timed runs."""

    median: float
    p90: float
    p99: float
    min: float
    max: float
    n: int  # runs summarized (p99 of a few runs is close to their maximum)

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        return cls(
            median=percentile(values, 50),
            p90=percentile(values, 90),
            p99=percentile(values, 99),
            min=min(values),
            max=max(values),
            n=len(values),
        )

    def to_json(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}
