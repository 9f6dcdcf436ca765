"""Differential percentages, Wilson intervals and the M:E ratio."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from marrowdx.domain.counting import differential, me_ratio, wilson_arrays, wilson_interval
from marrowdx.domain.taxonomy import default_taxonomy


def test_wilson_matches_published_value():
    # Brown, Cai & DasGupta example scale: 120/400 -> about 25.7%..34.7%.
    low, high = wilson_interval(120, 400)
    assert low == pytest.approx(0.2573, abs=5e-4)
    assert high == pytest.approx(0.3467, abs=5e-4)


def test_wilson_with_no_cells_is_uninformative():
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_refuses_impossible_counts():
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


@given(n=st.integers(1, 5000), data=st.data())
def test_wilson_contains_the_estimate_and_stays_in_range(n, data):
    k = data.draw(st.integers(0, n))
    low, high = wilson_interval(k, n)
    assert 0.0 <= low <= k / n <= high <= 1.0


@given(n=st.integers(0, 3000), data=st.data())
def test_array_wilson_is_the_scalar_one(n, data):
    k = data.draw(st.floats(0, n)) if n else 0.0
    low, high = wilson_arrays(np.array([k]), np.array([float(n)]))
    assert (low[0], high[0]) == pytest.approx(wilson_interval(k, n), abs=1e-12)


@given(k=st.integers(0, 200))
def test_wilson_narrows_with_more_cells(k):
    small = wilson_interval(k, 200)
    large = wilson_interval(k * 10, 2000)
    assert large[1] - large[0] < small[1] - small[0]


def test_differential_percentages_and_rows():
    tax = default_taxonomy()
    diff = differential({"blast": 30, "lymphocyte": 50, "erythroblast": 20}, tax)
    assert diff.total == 100
    rows = {r.code: r for r in diff.rows}
    assert rows["blast"].percent == pytest.approx(30.0)
    assert rows["lymphocyte"].ci_low_percent < 50 < rows["lymphocyte"].ci_high_percent
    # Every countable class gets a row, zero or not, in taxonomy order.
    assert [r.code for r in diff.rows] == list(tax.countable_codes)


def test_myeloid_erythroid_ratio():
    tax = default_taxonomy()
    diff = differential({"segmented_neutrophil": 60, "myelocyte": 15, "erythroblast": 25}, tax)
    assert diff.myeloid_erythroid_ratio == pytest.approx(3.0)
    assert differential({"lymphocyte": 10}, tax).myeloid_erythroid_ratio is None
    assert differential({"lymphocyte": 10}, tax).myeloid_erythroid_ci is None


def test_me_ratio_counts_blasts_in_the_myeloid_series():
    # "blast" (lineage unspecified) is the blast class the classifier knows: ICSH counts blasts as myeloid.
    diff = differential({"blast": 30, "segmented_neutrophil": 30, "erythroblast": 20, "lymphocyte": 20},
                        default_taxonomy())
    assert diff.myeloid_erythroid_ratio == pytest.approx(3.0)


@given(m=st.integers(0, 500), e=st.integers(1, 500))
def test_me_ratio_interval_contains_the_ratio(m, e):
    ratio, (low, high) = me_ratio(m, e)
    assert 0 <= low <= ratio <= high < math.inf


def test_me_ratio_interval_matches_the_binomial_of_m_among_m_plus_e():
    ratio, (low, high) = me_ratio(300, 100)
    p_low, p_high = wilson_interval(300, 400)
    assert ratio == 3.0
    assert low == pytest.approx(p_low / (1 - p_low)) and high == pytest.approx(p_high / (1 - p_high))
    assert 2.3 < low < 3.0 < high < 3.9


def test_differential_refuses_excluded_categories():
    with pytest.raises(ValueError, match="not countable"):
        differential({"platelet": 3, "lymphocyte": 10}, default_taxonomy())


@given(counts=st.dictionaries(st.sampled_from(default_taxonomy().countable_codes), st.integers(0, 300), max_size=8))
def test_percentages_sum_to_100(counts):
    diff = differential(counts, default_taxonomy())
    total = sum(r.percent for r in diff.rows)
    assert math.isclose(total, 100.0, abs_tol=1e-6) if diff.total else total == 0
