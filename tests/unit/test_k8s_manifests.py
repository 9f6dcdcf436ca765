"""deploy/k8s renders (kubectl kustomize) for each overlay, every object is valid against the
Kubernetes schemas (kubernetes-validate, offline), and the rendered deployment keeps the promises
docs/deployment-kubernetes.md makes about it."""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from marrowdx.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ("cpu", "gpu")
# Kubernetes releases checked: the oldest still commonly run and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.30.0", "latest")
# Objects of operators' CRDs, which have no schema in the validator: named, with the fields we rely on.
CUSTOM_KINDS = {("postgresql.cnpg.io/v1", "Cluster"): ("instances", "storage", "bootstrap")}
# Environment variables read by the client side of the image (transport.py), not by Settings.
CLIENT_ENV = {"MARROWDX_CLIENT_CA"}


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (it renders the Kustomize overlays); install it to check deploy/k8s")
    out = subprocess.run([kubectl, "kustomize", str(ROOT / "deploy" / "k8s" / "overlays" / request.param)],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    return request.param, [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(objects: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[dict], kind: str, name: str) -> dict:
    (found,) = by_kind(objects, kind, name)
    return found


def test_every_rendered_object_is_valid_for_kubernetes(rendered):
    import kubernetes_validate

    overlay, objects = rendered
    assert len(objects) >= 12
    for obj in objects:
        custom = CUSTOM_KINDS.get((obj["apiVersion"], obj["kind"]))
        if custom is not None:
            assert all(key in obj["spec"] for key in custom), obj["metadata"]["name"]
            continue
        for version in KUBERNETES_VERSIONS:
            wanted = kubernetes_validate.latest_version() if version == "latest" else version
            try:
                kubernetes_validate.validate(obj, wanted, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{overlay}: {obj['kind']}/{obj['metadata']['name']} on {wanted}: {exc.message} "
                            f"at {list(exc.path)}")
        assert obj["metadata"].get("namespace") in ("marrowdx", None)


def test_the_front_is_reached_per_call_through_a_headless_service(rendered):
    _, objects = rendered
    service = one(objects, "Service", "marrowdx-front")
    assert service["spec"]["clusterIP"] == "None"
    front = one(objects, "Deployment", "marrowdx-front")
    assert service["spec"]["selector"].items() <= front["spec"]["template"]["metadata"]["labels"].items()


def test_the_front_has_grpc_health_probes_resources_and_a_disruption_budget(rendered):
    _, objects = rendered
    front = one(objects, "Deployment", "marrowdx-front")
    labels = front["spec"]["template"]["metadata"]["labels"]
    (container,) = front["spec"]["template"]["spec"]["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert command[:2] == ["marrowdx", "health"] and "localhost:50051" in command
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    pdb = one(objects, "PodDisruptionBudget", "marrowdx-front")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] >= 1 and front["spec"]["replicas"] > pdb["spec"]["minAvailable"]


def test_the_autoscaler_follows_the_in_flight_gauge_the_service_exports(rendered):
    from marrowdx.api.observability import IN_FLIGHT

    _, objects = rendered
    hpa = one(objects, "HorizontalPodAutoscaler", "marrowdx-front")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "marrowdx-front"}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == IN_FLIGHT._name
    front = one(objects, "Deployment", "marrowdx-front")
    env = {e["name"]: e.get("value") for e in front["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert int(env["MARROWDX_METRICS_PORT"]) > 0 and env["MARROWDX_METRICS_HOST"] == "0.0.0.0"
    # The target sits below the per-pod limit, so pods are added before callers are refused.
    assert float(metric["pods"]["target"]["averageValue"]) < int(env["MARROWDX_MAX_IN_FLIGHT"])


def test_every_setting_the_front_is_given_exists_and_parses(rendered):
    _, objects = rendered
    front = one(objects, "Deployment", "marrowdx-front")
    env = {e["name"]: e.get("value") for e in front["spec"]["template"]["spec"]["containers"][0]["env"]}
    names = {f"MARROWDX_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    ours = {k: v for k, v in env.items() if k.startswith("MARROWDX_") and k not in CLIENT_ENV}
    assert ours.keys() <= names, sorted(ours.keys() - names)
    settings = Settings.from_env({k: v for k, v in ours.items() if v is not None})
    assert settings.host == "0.0.0.0" and settings.tls_cert and settings.clients_file
    assert "PGPASSWORD" in env and "@" in env["MARROWDX_DATABASE"] and ":" not in env["MARROWDX_DATABASE"].split("@")[0][
        len("postgresql://"):], "the database password comes from a secret, never the URL"


def test_secrets_for_tls_and_the_client_registry_are_declared_and_mounted(rendered):
    _, objects = rendered
    secrets = {s["metadata"]["name"] for s in by_kind(objects, "Secret")}
    assert {"marrowdx-tls", "marrowdx-clients"} <= secrets
    assert all("data" not in s and "stringData" not in s for s in by_kind(objects, "Secret")), \
        "no secret material in the repository"
    front = one(objects, "Deployment", "marrowdx-front")["spec"]["template"]["spec"]
    mounted = {v["secret"]["secretName"] for v in front["volumes"] if "secret" in v}
    assert {"marrowdx-tls", "marrowdx-clients"} <= mounted
    referenced = {e["valueFrom"]["secretKeyRef"]["name"] for e in front["containers"][0]["env"] if "valueFrom" in e}
    cluster = by_kind(objects, "Cluster")[0]["metadata"]["name"]
    assert referenced <= secrets | {f"{cluster}-app"}  # the operator makes <cluster>-app


def test_only_the_front_may_reach_triton_and_the_database(rendered):
    _, objects = rendered
    policies = by_kind(objects, "NetworkPolicy")
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and "ingress" not in p["spec"]]
    assert deny and deny[0]["spec"]["policyTypes"] == ["Ingress"]
    front_labels = one(objects, "Deployment", "marrowdx-front")["spec"]["template"]["metadata"]["labels"]
    triton_labels = one(objects, "Deployment", "marrowdx-triton")["spec"]["template"]["metadata"]["labels"]

    def pod_peers(selector_matches) -> list[dict]:
        peers = []
        for policy in policies:
            if selector_matches(policy["spec"]["podSelector"].get("matchLabels", {})):
                for rule in policy["spec"].get("ingress", []):
                    ports = {p["port"] for p in rule.get("ports", [])}
                    peers += [(peer, ports) for peer in rule.get("from", [{}])]
        return peers

    def only_front(peers, port):
        on_port = [peer for peer, ports in peers if port in ports or not ports]
        assert on_port, f"nobody may reach port {port}"
        for peer in on_port:
            selector = peer.get("podSelector", {}).get("matchLabels")
            namespaces = peer.get("namespaceSelector", {}).get("matchLabels", {})
            assert selector is not None or namespaces.get("kubernetes.io/metadata.name") == "cnpg-system", peer
            assert selector is None or selector.items() <= front_labels.items() or "cnpg.io/cluster" in selector

    only_front(pod_peers(lambda m: m.items() <= triton_labels.items() and m), 8001)
    only_front(pod_peers(lambda m: "cnpg.io/cluster" in m), 5432)


def test_postgresql_comes_from_an_operator_with_a_synchronous_standby(rendered):
    _, objects = rendered
    (cluster,) = by_kind(objects, "Cluster")
    assert cluster["apiVersion"].startswith("postgresql.cnpg.io/")
    assert cluster["spec"]["instances"] >= 2 and cluster["spec"]["minSyncReplicas"] >= 1
    assert not by_kind(objects, "StatefulSet"), "no hand-rolled database"


def test_overlays_differ_in_what_serves_the_models(rendered):
    overlay, objects = rendered
    triton = one(objects, "Deployment", "marrowdx-triton")["spec"]["template"]["spec"]
    (container,) = triton["containers"]
    gpus = container["resources"].get("limits", {}).get("nvidia.com/gpu")
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    if overlay == "gpu":
        assert gpus == "1" and container["resources"]["requests"]["nvidia.com/gpu"] == "1"
        (init,) = triton["initContainers"]
        assert "variants/gpu-libtorch" in " ".join(init["command"])
        assert (ROOT / "model_repository" / "variants" / "gpu-libtorch" / "classifier" / "config.pbtxt").is_file()
    else:
        assert gpus is None
        module = container["command"][container["command"].index("-m") + 1]
        assert importlib.util.find_spec(module) is not None, f"the CPU overlay runs {module}, which does not exist"
