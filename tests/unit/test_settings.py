"""One settings object: defaults <- MARROWDX_* env <- flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from marrowdx.settings import Settings


def test_env_overrides_defaults_and_flags_override_env():
    env = {"MARROWDX_PORT": "6000", "MARROWDX_TRITON_URL": "triton:8001", "MARROWDX_REJECT_PROBABILITY": "0.7"}
    s = Settings.from_env(env)
    assert (s.port, s.triton_url, s.reject_probability) == (6000, "triton:8001", 0.7)
    s = Settings.from_env(env, port=7000, triton_url=None)
    assert (s.port, s.triton_url) == (7000, "triton:8001")


def test_paths_and_bools_parse():
    s = Settings.from_env({"MARROWDX_STATE_DIR": "/tmp/x", "MARROWDX_LOG_JSON": "false"})
    assert s.state_dir == Path("/tmp/x") and s.log_json is False
    assert s.database_path == Path("/tmp/x/reports.sqlite3")


def test_bad_values_name_the_variable():
    with pytest.raises(ValueError, match="MARROWDX_PORT"):
        Settings.from_env({"MARROWDX_PORT": "lots"})
    with pytest.raises(ValueError, match="MARROWDX_LOG_JSON"):
        Settings.from_env({"MARROWDX_LOG_JSON": "maybe"})


def test_request_sizes_and_limits_must_be_positive():
    with pytest.raises(ValueError, match="classify_batch"):
        Settings.from_env({"MARROWDX_CLASSIFY_BATCH": "0"})
    with pytest.raises(ValueError, match="max_in_flight"):
        Settings(max_in_flight=0)
    assert Settings.from_env({"MARROWDX_CLASSIFY_IN_FLIGHT": "3"}).classify_in_flight == 3
