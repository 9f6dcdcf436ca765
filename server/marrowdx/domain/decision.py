"""The one decision predicate of the rules, and how many more cells would decide.

A rule's evidence is reduced to ``Bounds``: the cells called in its numerator,
the cells its lower bound may stand on (calls discounted by their measured
precision), the cells that may belong to it (calls of other classes weighted by
their measured confusion, rejected cells whose top-k names a numerator class)
and the denominators. The verdict compares the 95% interval built from them
with the threshold; the "about N more cells would decide" estimate asks the
*same* predicate at larger counts with every quantity at the same fraction, so
it never promises a decision the verdict would not give. The search is brute
force over a bounded range (vectorised): rounding and the confusion-based
widening make the decision non-monotone in the count, so bisection is unsafe.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from marrowdx.domain.counting import wilson_arrays, wilson_interval

# Extra cells the "more cells" search looks at: well past any manual count (500-1,000);
# beyond it the answer is "none within 10,000".
SEARCH_LIMIT = 10_000


class Verdict(StrEnum):
    POSITIVE = "positive"
    NEGATIVE = "negative"
    INDETERMINATE = "indeterminate"


@dataclass(frozen=True)
class Bounds:
    """Counts entering one rule's decision (fractional where weighted by confusion rates)."""

    k: float  # cells called in the numerator (the point estimate)
    n: float  # cells in the denominator
    k_low: float  # numerator cells the lower bound stands on (k times measured precision)
    k_high: float  # cells that may be in the numerator (k plus possibly-belonging cells)
    n_high: float  # denominator of the upper bound (n plus rejected cells that may belong)
    total: float = -1.0  # countable cells of the case (the minimum count applies to it); -1: n

    def __post_init__(self) -> None:
        if self.total < 0:
            object.__setattr__(self, "total", self.n)

    @property
    def percent(self) -> float:
        return 100.0 * self.k / self.n if self.n else 0.0

    def interval(self) -> tuple[float, float]:
        """95% bounds as fractions: Wilson low of k_low/n, Wilson high of k_high/n_high."""
        low, _ = wilson_interval(self.k_low, self.n)
        _, high = wilson_interval(self.k_high, self.n_high)
        return low, high

    def plain_interval(self) -> tuple[float, float]:
        """The interval from counting alone (calls taken at face value)."""
        return wilson_interval(self.k, self.n)

    def scaled(self, n: float) -> Bounds:
        """The same case at ``n`` cells in the denominator, every quantity at the same fraction."""
        s = n / self.n
        return Bounds(self.k * s, n, self.k_low * s, self.k_high * s, self.n_high * s, self.total * s)


def meets(fraction: np.ndarray | float, threshold: float, comparator: str) -> np.ndarray | bool:
    return fraction > threshold if comparator == ">" else fraction >= threshold


def verdicts(k_low: np.ndarray, n: np.ndarray, k_high: np.ndarray, n_high: np.ndarray, threshold: float,
             comparator: str, total: np.ndarray | None = None, minimum: float = 0) -> np.ndarray:
    """The predicate over arrays: 1 positive, -1 negative, 0 undecided (also while ``total``,
    the case's countable cells, is below ``minimum``, or the denominator is empty).

    ``threshold`` is a fraction. Positive when the lower bound meets the rule, negative when
    the (widened) upper bound misses it."""
    n = np.asarray(n, dtype=np.float64)
    total = n if total is None else np.asarray(total, dtype=np.float64)
    low, _ = wilson_arrays(k_low, n)
    _, high = wilson_arrays(k_high, n_high)
    out = np.where(meets(low, threshold, comparator), 1, np.where(~meets(high, threshold, comparator), -1, 0))
    return np.where((total >= minimum) & (n > 0), out, 0)


def _arrays(bounds: Bounds, scale: np.ndarray) -> tuple[np.ndarray, ...]:
    return (bounds.k_low * scale, bounds.n * scale, bounds.k_high * scale, bounds.n_high * scale, bounds.total * scale)


def verdict(bounds: Bounds, threshold: float, comparator: str, minimum: float = 0) -> Verdict:
    k_low, n, k_high, n_high, total = _arrays(bounds, np.ones(1))
    v = int(verdicts(k_low, n, k_high, n_high, threshold, comparator, total, minimum)[0])
    return {1: Verdict.POSITIVE, -1: Verdict.NEGATIVE, 0: Verdict.INDETERMINATE}[v]


def cells_to_decide(bounds: Bounds, thresholds: float | tuple[float, ...], comparator: str, minimum: float = 0,
                    limit: int = SEARCH_LIMIT) -> int:
    """The fewest extra countable cells (1..limit), at the case's fractions, at which
    ``verdict`` decides for every one of ``thresholds``; 0 when none within ``limit``
    would (or the denominator is empty)."""
    if bounds.n <= 0 or bounds.total <= 0:
        return 0
    extra = np.arange(1, limit + 1, dtype=np.float64)
    k_low, n, k_high, n_high, total = _arrays(bounds, (bounds.total + extra) / bounds.total)
    decided = np.ones(limit, dtype=bool)
    for threshold in (thresholds if isinstance(thresholds, tuple) else (thresholds,)):
        decided &= verdicts(k_low, n, k_high, n_high, threshold, comparator, total, minimum) != 0
    hits = np.flatnonzero(decided)
    return int(extra[hits[0]]) if len(hits) else 0
