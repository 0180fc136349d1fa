"""Deployment files, validated offline (no Docker daemon here): a real `bentoml build` of deploy/bentofile.yaml."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_bentoml_build(artifact: Path, bentoml_home: Path) -> None:
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home), "BENTOML_DO_NOT_TRACK": "True"}
    proc = subprocess.run(
        [os.sys.executable, "-m", "export.bento", str(artifact)],  # make bento MODEL=...
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tag = "seqclassifier:" + json.loads((artifact / "metadata.json").read_text())["model_version"]
    assert f"bundles model {tag}" in proc.stderr  # it says which model
    assert re.search(r"^bento seqserve:[a-z0-9]+ bundles model", proc.stderr, re.M), proc.stderr  # not a repr
    bentos = sorted((bentoml_home / "bentos/seqserve").glob("*/bento.yaml"))
    assert bentos, "no bento written"
    bento = bentos[-1].parent
    assert (bento / "env/docker/Dockerfile").exists()
    assert (bento / "src/service/service.py").exists() and not (bento / "src/training").exists()
    assert (bento / "src/service/core/artifact.py").exists() and not (bento / "src/export").exists()
    # What the bento carries is enough to import the service, without torch or the training code.
    check = (
        "import os, sys; sys.modules['torch'] = sys.modules['training'] = None;"
        "import service.service, service.core.artifact;"
        "assert all(m.__file__.startswith(os.getcwd()) for m in (service.service, service.core.artifact))"
    )  # from the bento's src/, not from this checkout (installed in editable mode)
    env["SEQSERVE_MODEL"], env["PYTHONPATH"] = str(artifact), ""
    imp = subprocess.run([os.sys.executable, "-c", check], cwd=bento / "src", env=env, capture_output=True, text=True)
    assert imp.returncode == 0, imp.stderr[-2000:]
    spec = yaml.safe_load((bento / "bento.yaml").read_text())
    assert [m["tag"] for m in spec["models"]] == [tag] and spec["service"] == "service.service:SeqServe"
    assert {"name": "SEQSERVE_MODEL", "value": tag, "stage": "all"} in spec["envs"]  # serves what it bundles


def test_alertmanager_routes_the_drift_alert_to_the_retrain_webhook() -> None:
    import yaml

    am = yaml.safe_load((ROOT / "deploy/alertmanager/alertmanager.yml").read_text())
    rules = (ROOT / "deploy/prometheus/rules/alerts.yml").read_text()
    route = next(r for r in am["route"]["routes"] if 'alertname="SeqserveInputDrift"' in r["matchers"])
    assert "alert: SeqserveInputDrift" in rules
    receiver = next(r for r in am["receivers"] if r["name"] == route["receiver"])
    hook = receiver["webhook_configs"][0]
    assert hook["url"].endswith("/admin/alert") and hook["http_config"]["authorization"]["type"] == "Bearer"
    assert "credentials_file" in hook["http_config"]["authorization"]  # the token is not in the file


def test_make_help_lists_every_target_and_monitor_follows_port(tmp_path: Path) -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = {line.split(":")[0] for line in makefile.splitlines() if line[:1].isalpha() and ":" in line}
    targets = {t for t in targets if t.replace("-", "").isalpha() and not t.isupper()}
    shown = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert {line.split()[1] for line in shown.splitlines()} == targets  # every target, each with a description
    plan = subprocess.run(
        ["make", "-n", "monitor", "PORT=3999", "GENERATE_PORT=3998"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    assert "127.0.0.1:3999" in plan and "127.0.0.1:3998" in plan and "promtool check config" in plan
    assert (ROOT / "LICENSE").read_text().split()[:2] == ["Apache", "License"]
