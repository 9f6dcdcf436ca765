"""The scaled-out setup on this machine (issue #19): a real PostgreSQL server, two tritonservers,
two front replicas sharing the database and balancing over both Triton servers, clients round robin
over both replicas; under load one replica and one tritonserver are killed with SIGKILL. Nothing
acknowledged is lost, nothing is stored twice, every resent request gets its original report from
the survivor, and nothing is left running afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest

from marrowdx.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def postgres_binaries():
    from marrowdx.store.pglocal import PostgresUnavailable, find_bindir

    try:
        find_bindir()
    except PostgresUnavailable as exc:
        pytest.skip(f"no PostgreSQL server to run the distributed test against: {exc}")


def our_processes(marker: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in text:
            found.append(text[:200])
    return found


def test_killing_a_replica_and_a_tritonserver_loses_and_duplicates_nothing(tmp_path, postgres_binaries):
    from marrowdx.faults_distributed import run_distributed

    result = run_distributed(40.0, tmp_path, Settings().model_repository)
    assert result["acknowledged"] >= 10
    assert result["lost"] == 0, result["lost_ids"]
    assert result["duplicated"] == 0 and result["acknowledged_but_stored_otherwise"] == 0
    # A resent request id is answered with its original report by the survivor, whichever replica
    # first answered it (the probe was answered by the replica that was then killed).
    assert result["resent"] >= 5 and result["retry_mismatch"] == 0 and result["cross_replica_probe_matched"]
    assert result["healthy_at_end"]
    # Every attempt is accounted for: acknowledged once, or failed with a status code and resent.
    assert result["requests_sent"] == result["acknowledged"] + sum(result["errors_by_code"].values())
    front, triton = result["faults"]
    assert front["recovery_s"] is not None and triton["recovery_s"] is not None
    # The case cut by the kill failed with a status and its resend reached the surviving replica.
    assert front["case_in_flight_on_it"] != "OK" and front["its_resend_acknowledged"]
    # A dead tritonserver is absorbed by the fronts (the call is retried on the other server).
    assert triton["errors_seen_by_clients"] == 0
    assert not our_processes(str(tmp_path)), "a front or tritonserver outlived the run"
    assert not our_processes(result["postgres_dir"]) and not Path(result["postgres_dir"]).exists()


def test_the_cpu_overlays_triton_is_ready_serves_the_contract_and_stops_on_sigterm(tmp_path):
    """What a Triton pod of deploy/k8s/overlays/cpu runs: the bundled server in the foreground, its
    readiness on HTTP (the kubelet's probe), and gone with its stubs on SIGTERM (pod deletion)."""
    import asyncio
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from marrowdx.domain.taxonomy import default_taxonomy
    from marrowdx.inference.launcher import free_port
    from marrowdx.inference.triton import TritonModels

    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    cmd = [sys.executable, "-m", "marrowdx.inference.standalone", "--model-repository",
           str(Settings().model_repository), "--state-dir", str(tmp_path), "--address", "127.0.0.1",
           "--grpc-port", str(grpc_port), "--http-port", str(http_port), "--metrics-port", str(metrics_port)]
    with open(tmp_path / "triton.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "triton.log").read_text()[-2000:]
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "not ready in 180 s"
            time.sleep(0.5)
        taxonomy = default_taxonomy()

        async def contract():
            models = TritonModels(f"127.0.0.1:{grpc_port}", 30)
            try:
                await models.load_contract(taxonomy.version, taxonomy.codes, taxonomy.detector_categories)
            finally:
                await models.close()

        asyncio.run(contract())
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        assert "nv_inference_request_success" in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            import os

            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    deadline = time.monotonic() + 10
    while our_processes(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not our_processes(str(tmp_path)), "a backend stub outlived its server"
