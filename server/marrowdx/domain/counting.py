"""The differential count: percentages of countable nucleated cells with 95%
Wilson score intervals, and the myeloid:erythroid ratio with its interval.

Wilson rather than the normal approximation because marrow fractions are
often near 0% and counts are a few hundred (Brown, Cai & DasGupta, Stat Sci
2001;16:101-133).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from marrowdx.domain.taxonomy import Taxonomy

Z_95 = 1.959963984540054
# ICSH 2008 counts every granulocytic cell, blasts included, in the myeloid series of the
# M:E ratio. The taxonomy's list predates the lineage classes and leaves out "blast"
# (lineage unspecified, the class most marrow blasts are called): a marrow blast is far
# more often myeloid than not, so it is counted here; lymphoblasts are not.
MYELOID_BLASTS_FOR_ME = ("blast", "myeloblast")


def wilson_interval(k: float, n: float, z: float = Z_95) -> tuple[float, float]:
    """95% interval for a proportion k/n, as fractions in [0, 1]; (0, 1) when n == 0.

    ``k`` may be fractional: the rules' bounds weigh cells by measured confusion rates."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n * (1 + 1e-12):
        raise ValueError(f"count {k} outside 0..{n}")
    k = min(k, n)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(0.0, p * (1 - p) / n + z * z / (4 * n * n))) / denom
    # The ends are exact at k = 0 and k = n; rounding would otherwise leave 1e-17.
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def wilson_arrays(k: np.ndarray, n: np.ndarray, z: float = Z_95) -> tuple[np.ndarray, np.ndarray]:
    """``wilson_interval`` over arrays (same ends, same conventions), for searching many counts at once."""
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    safe_n = np.where(n > 0, n, 1.0)
    k = np.minimum(k, safe_n)
    p = k / safe_n
    denom = 1 + z * z / safe_n
    centre = (p + z * z / (2 * safe_n)) / denom
    half = z * np.sqrt(np.maximum(0.0, p * (1 - p) / safe_n + z * z / (4 * safe_n * safe_n))) / denom
    low = np.where(k == 0, 0.0, np.maximum(0.0, centre - half))
    high = np.where(k == safe_n, 1.0, np.minimum(1.0, centre + half))
    return np.where(n > 0, low, 0.0), np.where(n > 0, high, 1.0)


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
    # 95% interval of the ratio (None with the ratio).
    myeloid_erythroid_ci: tuple[float, float] | None = None

    def count_of(self, codes: Iterable[str]) -> int:
        return sum(self.counts.get(c, 0) for c in codes)


def me_ratio(myeloid: int, erythroid: int) -> tuple[float | None, tuple[float, float] | None]:
    """M:E ratio and its 95% interval: given M + E cells, M is binomial, so the Wilson
    interval of M / (M + E) maps to the ratio through p / (1 - p). None without erythroid cells."""
    if erythroid <= 0:
        return None, None
    low, high = wilson_interval(myeloid, myeloid + erythroid)
    return myeloid / erythroid, (low / (1 - low), high / (1 - high))


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
    myeloid_codes = set(taxonomy.myeloid_codes) | (set(MYELOID_BLASTS_FOR_ME) & countable)
    myeloid = sum(counts.get(c, 0) for c in myeloid_codes)
    erythroid = sum(counts.get(c, 0) for c in taxonomy.erythroid_codes)
    ratio, ci = me_ratio(myeloid, erythroid)
    return Differential(dict((c, counts.get(c, 0)) for c in countable), total, tuple(rows), ratio, ci)
