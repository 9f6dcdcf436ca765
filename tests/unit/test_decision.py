"""The one decision predicate and the "N more cells would decide" estimate (issue #24 item 5)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marrowdx.domain.decision import Bounds, Verdict, cells_to_decide, verdict


def brute_force(bounds: Bounds, thresholds: tuple[float, ...], comparator: str, minimum: float, limit: int) -> int:
    """The definition, one count at a time, through the scalar verdict."""
    for extra in range(1, limit + 1):
        scaled = bounds.scaled(bounds.n * (bounds.total + extra) / bounds.total)
        if all(verdict(scaled, t, comparator, minimum) is not Verdict.INDETERMINATE for t in thresholds):
            return extra
    return 0


@st.composite
def case_bounds(draw):
    n = draw(st.integers(20, 1200))
    k = draw(st.integers(0, n))
    precision = draw(st.sampled_from([1.0, 0.97, 0.9, 0.75]))
    widen = draw(st.integers(0, n - k))
    rejected = draw(st.integers(0, 30))
    return Bounds(k, n, k * precision, min(k + widen + rejected, n + rejected), n + rejected)


@settings(max_examples=150, deadline=None)
@given(bounds=case_bounds(), threshold=st.sampled_from([0.05, 0.10, 0.20]), comparator=st.sampled_from([">", ">="]),
       minimum=st.sampled_from([0, 300]))
def test_cells_to_decide_agrees_with_brute_force(bounds, threshold, comparator, minimum):
    limit = 1500
    assert cells_to_decide(bounds, threshold, comparator, minimum, limit) == brute_force(
        bounds, (threshold,), comparator, minimum, limit)


@settings(max_examples=60, deadline=None)
@given(bounds=case_bounds())
def test_tier_search_needs_every_boundary_decided(bounds):
    thresholds = (0.05, 0.10, 0.20)
    limit = 1000
    assert cells_to_decide(bounds, thresholds, ">=", 300, limit) == brute_force(bounds, thresholds, ">=", 300, limit)


def test_the_promised_count_decides_and_one_fewer_does_not():
    b = Bounds(84, 400, 84, 84, 400)  # 21%, straddles 20%
    more = cells_to_decide(b, 0.20, ">=")
    assert more > 0
    assert verdict(b.scaled(400 + more), 0.20, ">=") is Verdict.POSITIVE
    assert verdict(b.scaled(400 + more - 1), 0.20, ">=") is Verdict.INDETERMINATE


def test_widening_that_never_shrinks_means_no_count_decides():
    # 10% called, but 15% of the cells may belong (a fraction that stays as the count grows):
    # the upper bound stays above 20% at any count, so no number of cells may be promised.
    b = Bounds(40, 400, 40, 100, 400)
    assert verdict(b, 0.20, ">=") is Verdict.INDETERMINATE
    assert cells_to_decide(b, 0.20, ">=") == 0
    # Counting alone (the old estimate, which ignored the widening) decides it at once.
    assert verdict(Bounds(40, 400, 40, 40, 400), 0.20, ">=") is Verdict.NEGATIVE


def test_fraction_at_the_threshold_is_never_decided():
    assert cells_to_decide(Bounds(80, 400, 80, 80, 400), 0.20, ">=") == 0


def test_minimum_count_is_part_of_the_predicate():
    b = Bounds(150, 200, 150, 150, 200)  # 75% blasts, but only 200 cells
    assert verdict(b, 0.20, ">=", minimum=300) is Verdict.INDETERMINATE
    assert verdict(b, 0.20, ">=") is Verdict.POSITIVE
    assert cells_to_decide(b, 0.20, ">=", minimum=300) == 100


def test_lower_bound_stands_only_on_measured_precision():
    # 25% called, but the calls are right 70% of the time: the lower bound is no longer above 20%.
    assert verdict(Bounds(250, 1000, 250, 250, 1000), 0.20, ">") is Verdict.POSITIVE
    assert verdict(Bounds(250, 1000, 175, 250, 1000), 0.20, ">") is Verdict.INDETERMINATE


@pytest.mark.parametrize("comparator", [">", ">="])
def test_strict_and_inclusive_comparators_differ_only_at_the_threshold(comparator):
    b = Bounds(2000, 10000, 2000, 2000, 10000)
    assert verdict(b, 0.20, comparator) is Verdict.INDETERMINATE
