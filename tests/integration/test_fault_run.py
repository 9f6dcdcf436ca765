"""The fault script, short: kill -9 of Triton and of the front service, overload
and bad input under load; no acknowledged report may be lost."""

from __future__ import annotations

import pytest

from marrowdx.faults import run_faults
from marrowdx.settings import Settings

pytestmark = pytest.mark.integration


def test_no_acknowledged_report_is_lost_across_kill_9s(tmp_path):
    result = run_faults(40.0, tmp_path, Settings().model_repository)
    assert result["acknowledged"] > 20
    assert result["lost"] == 0 and result["healthy_at_end"]
    # Every attempt is accounted for: acknowledged once, or failed with a status code.
    assert result["requests_sent"] == result["acknowledged"] + sum(result["errors_by_code"].values())
    events = {e["fault"].split(":")[0]: e for e in result["faults"]}
    assert events["kill -9 tritonserver"]["recovery_s"] is not None
    restart = events["kill -9 front service, restart"]
    assert restart["recovery_s"] is not None and restart["orphan_triton_left"] is False
    overload = events["overload"]
    assert overload["codes"].get("RESOURCE_EXHAUSTED", 0) > 0 and overload["codes"].get("OK", 0) > 0
    assert overload["front_rss_mb_peak"] < 4 * max(overload["front_rss_mb_before"], 100)
    storm = events["cancellation storm"]
    assert storm["in_flight_after"] == 0 and storm["served_afterwards"]
    assert storm["codes"].get("CANCELLED", 0) + storm["codes"].get("DEADLINE_EXCEEDED", 0) > 0
    bad = events["bad input"]
    assert set(bad["codes"].values()) == {"INVALID_ARGUMENT"} and bad["served_afterwards"]

