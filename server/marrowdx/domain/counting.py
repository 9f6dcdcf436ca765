"""The differential count: percentages of countable nucleated cells with 95%
Wilson score intervals, and the myeloid:erythroid ratio.

Wilson rather than the normal approximation because marrow fractions are
often near 0% and counts are a few hundred (Brown, Cai & DasGupta, Stat Sci
2001;16:101-133).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from marrowdx.domain.taxonomy import Taxonomy

Z_95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """95% interval for a proportion k/n, as fractions in [0, 1]; (0, 1) when n == 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"count {k} outside 0..{n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # The ends are exact at k = 0 and k = n; rounding would otherwise leave 1e-17.
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def cells_to_decide(k: int, n: int, threshold: float, limit: int = 100_000) -> int:
    """Extra cells needed, at the same observed fraction, for the interval to clear
    ``threshold`` (a fraction). 0 when it cannot be known (fraction equals the threshold)."""
    if n <= 0:
        return 0
    p = k / n
    if p == threshold:
        return 0
    extra = max(1, n // 10)
    while n + extra <= limit:
        total = n + extra
        low, high = wilson_interval(round(p * total), total)
        if low > threshold or high < threshold:
            # Refine downwards by bisection: the first count that decides.
            lo, hi = max(0, extra // 2), extra
            while hi - lo > 1:
                mid = (lo + hi) // 2
                l2, h2 = wilson_interval(round(p * (n + mid)), n + mid)
                if l2 > threshold or h2 < threshold:
                    hi = mid
                else:
                    lo = mid
            return hi
        extra *= 2
    return 0


@dataclass(frozen=True)
class DifferentialRow:
    code: str
    label: str
    count: int
    percent: float
    ci_low_percent: float
    ci_high_percent: float


@dataclass(frozen=True)
class Differential:
    counts: Mapping[str, int]  # countable classes only
    total: int
    rows: tuple[DifferentialRow, ...]
    myeloid_erythroid_ratio: float | None

    def count_of(self, codes: Iterable[str]) -> int:
        return sum(self.counts.get(c, 0) for c in codes)


def differential(counts: Mapping[str, int], taxonomy: Taxonomy) -> Differential:
    """Rows for every countable class in taxonomy order (zero rows included, so a
    reviewer sees what was looked for). Non-countable codes in ``counts`` are refused."""
    countable = set(taxonomy.countable_codes)
    unknown = [c for c, k in counts.items() if k and c not in countable]
    if unknown:
        raise ValueError(f"not countable classes in the differential: {sorted(unknown)}")
    if any(k < 0 for k in counts.values()):
        raise ValueError("negative cell count")
    total = sum(counts.get(c, 0) for c in countable)
    rows = []
    for cls in taxonomy.classes:
        if not cls.countable:
            continue
        k = counts.get(cls.code, 0)
        low, high = wilson_interval(k, total)
        rows.append(DifferentialRow(cls.code, cls.label, k, 100.0 * k / total if total else 0.0, 100 * low, 100 * high))
    myeloid = sum(counts.get(c, 0) for c in taxonomy.myeloid_codes)
    erythroid = sum(counts.get(c, 0) for c in taxonomy.erythroid_codes)
    ratio = myeloid / erythroid if erythroid else None
    return Differential(dict((c, counts.get(c, 0)) for c in countable), total, tuple(rows), ratio)
