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


def test_the_advertised_target_count_is_the_rule_sets_default_that_reports_use():
    """GetModelInfo advertised a target_count setting that no case used (the rule set's wins)."""
    import dataclasses

    from marrowdx.app import service_thresholds
    from marrowdx.domain.diagnosis import default_rules

    rules = dataclasses.replace(default_rules(), default_target_count=321, minimum_count=200)
    thresholds = service_thresholds(Settings(), rules)
    assert (thresholds.target_count, thresholds.minimum_count) == (321, 200)
    assert "target_count" not in {f.name for f in dataclasses.fields(Settings)}


def test_the_metrics_listener_binds_the_configured_host():
    import urllib.request

    from marrowdx.app import start_metrics
    from marrowdx.inference.launcher import free_port

    assert Settings().metrics_host == "127.0.0.1" and start_metrics(Settings()) is None  # off unless a port is set
    port = free_port()
    server = start_metrics(Settings(metrics_port=port, metrics_host="127.0.0.1"))
    try:
        assert b"marrowdx_rpcs" in urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    finally:
        server.shutdown()
        server.server_close()
    # An address this machine does not have (RFC 5737 documentation range: the bind fails at once,
    # nothing is contacted) is refused by name: the setting is what the listener binds.
    with pytest.raises(ValueError, match="192.0.2.1"):
        start_metrics(Settings(metrics_port=free_port(), metrics_host="192.0.2.1"))
