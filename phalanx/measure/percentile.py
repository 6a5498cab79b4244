"""The one percentile definition phalanx reports: nearest rank.

The ``q``-th percentile of ``N`` samples is the smallest sample such that at least
``q%`` of the samples are at most it, i.e. the sample of rank ``ceil(q/100 * N)`` in
ascending order. It is always one of the samples (no interpolation), so a p99 of a
run is a latency some request really had. The bench's latency histogram ranks its
buckets the same way (:class:`phalanx.bench.results.LatencyHistogram`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def nearest_rank(q: float, count: int) -> int:
    """The 1-based rank of the ``q``-th percentile (0 < q <= 100) among ``count``
    ordered samples; ValueError for a ``q`` outside that range."""
    if not 0 < q <= 100:
        raise ValueError(f"percentile rank must be in (0, 100], got {q}")
    return max(1, math.ceil(q / 100 * count))


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank ``q``-th percentile (0 < q <= 100) of ``values`` (need not be
    sorted); ValueError when there are none."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    return ordered[nearest_rank(q, len(ordered)) - 1]
