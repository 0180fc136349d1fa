"""Kubernetes and images (issue 14), offline: every overlay renders with kustomize and validates strictly against
the Kubernetes 1.30 schemas; yamllint and hadolint are clean; the probes and ports name endpoints the running
service really has; the pods run as non-root on a read-only root filesystem with writable volumes where the
service writes; the grace period covers the drain; the HPA's custom metric is the one the adapter rule serves."""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu", "cpu-postgresql", "cpu-generate", "cpu-forecast", "cpu-translate", "cpu-textclf")
BIN = Path(sys.executable).parent
KUBE_VERSION = "1.30.0"


CRDS = ROOT / "tests" / "schemas" / "crds"  # the upstream projects' own, see PROVENANCE.md there
CUSTOM = {
    "ServiceMonitor": "monitoring.coreos.com_servicemonitors",
    "PrometheusRule": "monitoring.coreos.com_prometheusrules",
    "ServingRuntime": "serving.kserve.io_servingruntimes",
    "InferenceService": "serving.kserve.io_inferenceservices",
}


def render(overlay: str, where: Path = K8S / "overlays") -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(where / overlay)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def crd_schema(kind: str, api_version: str) -> dict:
    crd = yaml.safe_load(gzip.decompress((CRDS / f"{CUSTOM[kind]}.yaml.gz").read_bytes()))
    version = api_version.split("/")[1]
    found = [v for v in crd["spec"]["versions"] if v["name"] == version and v.get("served", True)]
    assert found, f"{kind} {api_version}: not a version the CRD serves"
    return found[0]["schema"]["openAPIV3Schema"]


def unknown_fields(obj: object, schema: dict, path: str = "") -> list[str]:
    """Fields the schema does not declare (what --strict rejects for built-in kinds; the API server would
    silently prune them from a custom resource, so a typo would vanish instead of failing)."""
    if schema.get("x-kubernetes-preserve-unknown-fields") or not isinstance(obj, (dict, list)):
        return []
    if isinstance(obj, list):
        return [f for i, x in enumerate(obj) for f in unknown_fields(x, schema.get("items", {}), f"{path}[{i}]")]
    props = schema.get("properties")
    if props is None:
        return []
    out = []
    for key, value in obj.items():
        if key not in props:
            if not schema.get("additionalProperties"):
                out.append(f"{path}.{key}")
            continue
        out += unknown_fields(value, props[key], f"{path}.{key}")
    return out


def validate_custom(doc: dict) -> None:
    schema = crd_schema(doc["kind"], doc["apiVersion"])
    body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
    props = {k: v for k, v in schema["properties"].items() if k not in ("apiVersion", "kind", "metadata")}
    validator = jsonschema.Draft7Validator({**schema, "properties": props})  # the CRDs' Go regexes: no schema check
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(body)]
    assert not errors, (doc["kind"], errors[:5])
    assert not unknown_fields(body, schema), (doc["kind"], unknown_fields(body, schema))


def by_kind(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) is not installed")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_render_and_validate_strictly(overlay: str, tmp_path: Path) -> None:
    docs = render(overlay)
    rendered = tmp_path / f"{overlay}.yaml"
    rendered.write_text(yaml.safe_dump_all([d for d in docs if d["kind"] not in CUSTOM]))
    for doc in docs:
        if doc["kind"] in CUSTOM:  # against the operator's own CRD
            validate_custom(doc)
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


@pytest.mark.parametrize("overlay", ("cpu", "gpu", "cpu-generate"))
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
    assert dockerfile.count("COPY deploy/requirements-serve.txt") == 1  # the app stage, for serve and serve-gpu
    assert dockerfile.count("COPY --from=app /app /app") == 2
    lines = (ROOT / "deploy" / "requirements-serve.txt").read_text().splitlines()
    packages = [line for line in lines if line and not line.startswith("#")]
    assert packages and not any(p.startswith("torch") for p in packages)
    # every third-party module the service imports is listed, or comes with one that is (BentoML's own)
    names = {re.split(r"[\[<>=\s]", p)[0].replace("-", "_") for p in packages} | {"onnxruntime"}
    with_bentoml = {"starlette", "pydantic", "pydantic_core", "annotated_types", "aiohttp", "_bentoml_sdk"}
    imported = {
        m.group(1) or m.group(2)
        for f in (ROOT / "service").rglob("*.py")
        for m in re.finditer(r"^\s*(?:import (\w+)|from (\w+)[\w.]* import )", f.read_text(), re.M)
    }
    third_party = {m for m in imported - set(sys.stdlib_module_names) - {"service", "__future__"}}
    assert third_party - with_bentoml <= names, third_party - with_bentoml - names


def test_prometheus_rule_is_generated_from_deploy_prometheus_and_passes_promtool(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "deploy" / "k8s"))
    try:
        import prometheusrule
    finally:
        sys.path.pop(0)
    assert prometheusrule.OUT.read_text() == prometheusrule.render(), "run make manifests (never edit it by hand)"
    rule = yaml.safe_load(prometheusrule.OUT.read_text())
    validate_custom(rule)
    assert any(d["kind"] == "PrometheusRule" for d in render("cpu")) and any(
        d["kind"] == "ServiceMonitor" for d in render("gpu")
    )
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (make prometheus installs it; CI does)")
    extracted = tmp_path / "rules.yml"
    extracted.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    out = subprocess.run([promtool, "check", "rules", str(extracted)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_kserve_runtime_and_inference_service(server: str) -> None:
    docs = render("kserve", ROOT / "deploy")
    for doc in docs:
        validate_custom(doc)
    runtime = by_kind(docs, "ServingRuntime")[0]["spec"]
    assert runtime["protocolVersions"] == ["v2"]
    c = runtime["containers"][0]
    port = c["ports"][0]["containerPort"]
    assert c["args"][c["args"].index("--port") + 1] == str(port)
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] == port
        assert httpx.get(server + c[probe]["httpGet"]["path"]).status_code == 200, probe
    isvc = by_kind(docs, "InferenceService")[0]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == "seqserve" and model["protocolVersion"] == "v2"
    assert model["storageUri"].startswith("pvc://seqserve-models/")


def test_the_custom_resource_check_catches_typos_and_wrong_types() -> None:
    monitor = next(d for d in render("cpu") if d["kind"] == "ServiceMonitor")
    typo = yaml.safe_load(yaml.safe_dump(monitor))
    typo["spec"]["endpoints"][0]["interva"] = "15s"
    with pytest.raises(AssertionError, match="interva"):
        validate_custom(typo)
    wrong = yaml.safe_load(yaml.safe_dump(monitor))
    wrong["spec"]["endpoints"] = "http"
    with pytest.raises(AssertionError, match="is not of type"):
        validate_custom(wrong)


def test_the_generation_pods_use_the_classifiers_image() -> None:
    docs = render("cpu-generate")
    images = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]["image"]
        for d in by_kind(docs, "Deployment")
    }
    assert images["seqserve-generate"] == images["seqserve"], images
    c = by_kind(docs, "Deployment", "seqserve-generate")[0]["spec"]["template"]["spec"]["containers"][0]
    assert c["args"][0] == "service.generate_service:SeqGenerate"
    monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")["spec"]["selector"]["matchExpressions"][0]
    assert set(monitor["values"]) == {
        "seqserve",
        "seqserve-generate",
        "seqserve-forecast",
        "seqserve-translate",
        "seqserve-textclf",
    }  # job labels the rules expect


def test_the_forecast_pods_serve_the_forecaster_and_are_scraped() -> None:
    docs = render("cpu-forecast")
    c = by_kind(docs, "Deployment", "seqserve-forecast")[0]["spec"]["template"]["spec"]["containers"][0]
    assert c["args"][0] == "service.forecast_service:SeqForecast"
    assert (
        c["image"] == by_kind(docs, "Deployment", "seqserve")[0]["spec"]["template"]["spec"]["containers"][0]["image"]
    )
    assert by_kind(docs, "Service", "seqserve-forecast")


def test_the_translate_pods_serve_the_translator_and_are_scraped() -> None:
    docs = render("cpu-translate")
    c = by_kind(docs, "Deployment", "seqserve-translate")[0]["spec"]["template"]["spec"]["containers"][0]
    assert c["args"][0] == "service.translate_service:SeqTranslate"
    assert (
        c["image"] == by_kind(docs, "Deployment", "seqserve")[0]["spec"]["template"]["spec"]["containers"][0]["image"]
    )
    assert by_kind(docs, "Service", "seqserve-translate") and by_kind(docs, "NetworkPolicy", "seqserve-translate")


def test_the_textclf_pods_serve_the_text_classifier_and_are_scraped() -> None:
    docs = render("cpu-textclf")
    c = by_kind(docs, "Deployment", "seqserve-textclf")[0]["spec"]["template"]["spec"]["containers"][0]
    assert c["args"][0] == "service.textclf_service:SeqTextClf"
    assert (
        c["image"] == by_kind(docs, "Deployment", "seqserve")[0]["spec"]["template"]["spec"]["containers"][0]["image"]
    )
    assert by_kind(docs, "Service", "seqserve-textclf") and by_kind(docs, "NetworkPolicy", "seqserve-textclf")


def test_a_pod_waiting_for_its_first_model_is_alive_not_restarted() -> None:
    """Issue 29 (3): the images start the launcher (it answers /livez while no champion exists), and no probe
    that a waiting pod fails can restart it: startup and liveness look at /livez, readiness at /readyz."""
    dockerfile = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    assert dockerfile.count('ENTRYPOINT ["python3", "-m", "service.launch"]') == 2
    for overlay in ("cpu", "gpu", "cpu-generate", "cpu-forecast", "cpu-translate", "cpu-textclf"):
        for d in by_kind(render(overlay), "Deployment"):
            for c in d["spec"]["template"]["spec"]["containers"]:
                if "readinessProbe" not in c:
                    continue
                assert c["startupProbe"]["httpGet"]["path"] == "/livez", (overlay, d["metadata"]["name"])
                assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
                assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_make_images_names_every_dockerfile_target_and_the_context_holds_what_they_copy() -> None:
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        pytest.skip("a Docker engine is here: make images would build for minutes")
    out = subprocess.run(["make", "-s", "images", "REGISTRY=r.example", "IMAGE_VERSION=v9"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    dockerfile = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    targets = set(re.findall(r"^FROM \S+ AS (\S+)$", dockerfile, re.M)) - {"app"}
    built = dict(re.findall(r"--target (\S+) -t (\S+) \.$", out.stdout, re.M))
    assert set(built) == targets == {"serve", "serve-gpu", "train"}, out.stdout
    assert built["serve"] == "r.example/seqserve:v9" and built["train"] == "r.example/seqserve-train:v9"
    admitted = [x[1:].rstrip("/") for x in (ROOT / ".dockerignore").read_text().split() if x.startswith("!")]
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.M):
        for path in src.split():
            assert any(path.rstrip("/") == a or path.startswith(a + "/") for a in admitted), path
