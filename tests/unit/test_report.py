"""Counting cell calls: countable cells per class, excluded objects per reason."""

from __future__ import annotations

from marrowdx.domain.cells import CellCall, Exclusion
from marrowdx.domain.report import CaseTally, count_calls


def call(cls: str, exclusion: Exclusion = Exclusion.NONE) -> CellCall:
    return CellCall(0, "", None, 0.0, "", exclusion, cls, ())


def test_count_calls_splits_counted_from_excluded():
    calls = [call("blast"), call("blast"), call("lymphocyte"), call("blast", Exclusion.LOW_CONFIDENCE),
             call("", Exclusion.CUT_BY_EDGE), call("", Exclusion.CUT_BY_EDGE)]
    classes, excluded = count_calls(calls)
    assert classes == {"blast": 2, "lymphocyte": 1}
    assert excluded == {"low_confidence": 1, "cut_by_edge": 2}


def test_tally_reaches_its_target_on_counted_cells_only():
    tally = CaseTally(target_count=3)
    tally.add([call("blast"), call("blast"), call("monocyte", Exclusion.OVERLAPPING)])
    assert tally.cells_counted == 2 and not tally.target_reached
    tally.add([call("monocyte")])
    assert tally.target_reached and tally.class_counts == {"blast": 2, "monocyte": 1}
