"""Kubernetes and images (issue 14), offline: every overlay renders with kustomize and validates strictly against
the Kubernetes 1.30 schemas; yamllint and hadolint are clean; the probes and ports name endpoints the running
service really has; the pods run as non-root on a read-only root filesystem with writable volumes where the
service writes; the grace period covers the drain; the HPA's custom metric is the one the adapter rule serves."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu", "cpu-postgresql")
BIN = Path(sys.executable).parent
KUBE_VERSION = "1.30.0"


def render(overlay: str) -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) is not installed")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_render_and_validate_strictly(overlay: str, tmp_path: Path) -> None:
    docs = render(overlay)
    rendered = tmp_path / f"{overlay}.yaml"
    rendered.write_text(yaml.safe_dump_all(docs))
    cmd = [str(BIN / "kubernetes-validate"), "--strict", "-k", KUBE_VERSION, "--quiet", str(rendered)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "HorizontalPodAutoscaler"} <= kinds
    assert {"CronJob", "NetworkPolicy", "PersistentVolumeClaim"} <= kinds


def test_yamllint_and_hadolint_are_clean() -> None:
    out = subprocess.run(
        [str(BIN / "yamllint"), "-s", "deploy/", ".yamllint"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout
    out = subprocess.run([str(BIN / "hadolint"), "deploy/docker/Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_probes_and_ports_are_real_endpoints(server: str) -> None:
    docs = render("cpu")
    pod = by_kind(docs, "Deployment", "seqserve")[0]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    port = {p["name"]: p["containerPort"] for p in c["ports"]}["http"]
    assert c["args"][c["args"].index("--port") + 1] == str(port)
    service = by_kind(docs, "Service", "seqserve")[0]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert service["spec"]["selector"].items() <= pod_labels(docs).items()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        path = c[probe]["httpGet"]["path"]
        assert c[probe]["httpGet"]["port"] == "http"
        assert httpx.get(server + path).status_code == 200, (probe, path)
    assert httpx.get(server + "/metrics").status_code == 200  # what the ServiceMonitor scrapes


def pod_labels(docs: list[dict]) -> dict:
    return by_kind(docs, "Deployment", "seqserve")[0]["spec"]["template"]["metadata"]["labels"]


@pytest.mark.parametrize("overlay", ("cpu", "gpu"))
def test_pods_are_locked_down_and_write_only_to_volumes(overlay: str) -> None:
    docs = render(overlay)
    dockerfile = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    for d in by_kind(docs, "Deployment") + [j["spec"]["jobTemplate"] for j in by_kind(docs, "CronJob")]:
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"]
            mounts = {m["mountPath"] for m in c["volumeMounts"]}
            assert {"/tmp", "/var/lib/seqserve/bentoml", "/var/lib/seqserve/bentoml/models"} <= mounts
            env = {e["name"]: e for e in c.get("env", [])}
            assert env["BENTOML_HOME"]["value"] == "/var/lib/seqserve/bentoml"
            assert env["SEQSERVE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "seqserve-secrets"
            assert "limits" in c["resources"] and "requests" in c["resources"]
            assert ":latest" not in c["image"] and re.search(r":[0-9]", c["image"]), c["image"]
    text = yaml.safe_dump_all(docs)
    assert "seqclassifier:latest" not in text and "seqclassifier:latest" not in dockerfile  # the store is a volume
    config = by_kind(docs, "ConfigMap")[0]["data"]
    assert config["BENTOML_DO_NOT_TRACK"] == "True"
    assert config["SEQSERVE_DEVICE"] == ("cuda" if overlay == "gpu" else "cpu")
    server = by_kind(docs, "Deployment", "seqserve")[0]["spec"]["template"]["spec"]
    if overlay == "gpu":
        assert server["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1 and server["tolerations"]


def test_grace_period_covers_the_drain_and_the_hpa_metric_is_served() -> None:
    docs = render("cpu")
    pod = by_kind(docs, "Deployment", "seqserve")[0]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    drain = int(c["args"][c["args"].index("--timeout-graceful-shutdown") + 1])
    pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > drain + pre_stop
    assert drain >= 2 * 2  # the longest batch: SEQSERVE_MAX_LATENCY_MS (2 s) of waiting plus its run
    hpa = by_kind(docs, "HorizontalPodAutoscaler")[0]["spec"]
    pods_metric = next(m["pods"]["metric"]["name"] for m in hpa["metrics"] if m["type"] == "Pods")
    adapter = yaml.safe_load((K8S / "prometheus-adapter" / "rules.yaml").read_text())
    assert pods_metric in {r["name"]["as"] for r in adapter["rules"]["custom"]}
    pdb = by_kind(docs, "PodDisruptionBudget")[0]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels(docs).items() and hpa["minReplicas"] >= 2


def test_one_list_of_serving_packages_for_the_image_and_the_bento() -> None:
    bentofile = yaml.safe_load((ROOT / "deploy" / "bentofile.yaml").read_text())
    assert bentofile["python"]["requirements_txt"] == "deploy/requirements-serve.txt"
    dockerfile = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    assert dockerfile.count("COPY deploy/requirements-serve.txt") == 2  # serve and serve-gpu
    lines = (ROOT / "deploy" / "requirements-serve.txt").read_text().splitlines()
    packages = [line for line in lines if line and not line.startswith("#")]
    assert packages and not any(p.startswith("torch") for p in packages)
