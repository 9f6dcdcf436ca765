"""The load generator against the real stack: bounded, counts what it sends."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from marrowdx.loadgen import LoadConfig, load_images, run_load

pytestmark = pytest.mark.integration
SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def test_closed_loop_stops_at_the_request_count(stack):
    images = load_images(sorted((SAMPLES / "fields" / "images").glob("*.jpg")))
    result = asyncio.run(run_load(LoadConfig(stack.address, "analyze", images, concurrency=2, duration_s=0,
                                             requests=6, progress=False)))
    summary = result.summary()
    assert (summary["sent"], summary["ok"], summary["errors"]) == (6, 6, {})
    assert 0 < summary["latency_ms"]["p50"] <= summary["latency_ms"]["max"]
    assert summary["items_per_s"] > 0


def test_open_loop_keeps_the_schedule_and_counts_errors(stack):
    crops = load_images(sorted((SAMPLES / "demo-case" / "crops").glob("*.jpg"))[:8])
    result = asyncio.run(run_load(LoadConfig(stack.address, "classify", crops, rate=10, duration_s=1.0,
                                             crops_per_request=4, progress=False)))
    assert 8 <= result.sent <= 10 and result.ok == result.sent
    assert result.items == 4 * result.ok


def test_a_load_test_must_stop_by_itself():
    with pytest.raises(ValueError, match="stop by itself"):
        asyncio.run(run_load(LoadConfig("127.0.0.1:1", "analyze", [b"x"], duration_s=0, requests=0)))


def test_streamed_cases_carry_each_image_once_and_a_specimen_type(stack):
    """More fields per case than images: the case still holds each image once (the service refuses
    repeats), and every case names its specimen (the service refuses one that does not)."""
    images = load_images(sorted((SAMPLES / "fields" / "images").glob("*.jpg"))[:2])
    result = asyncio.run(run_load(LoadConfig(stack.address, "stream", images, concurrency=1, duration_s=0,
                                             requests=2, fields_per_case=5, progress=False)))
    summary = result.summary()
    assert (summary["sent"], summary["ok"], summary["errors"]) == (2, 2, {})
