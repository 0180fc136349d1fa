"""Monitoring with a real Prometheus (Debian package) scraping a real `bentoml serve`, both on 127.0.0.1.

Known traffic goes in (good sequences, invalid requests of each kind, then a drifted stream); the counts,
the drift score and the drift alert are read back through Prometheus's HTTP API. The rule files are the
shipped ones, plus a test-only copy of the drift alert with a short ``for:``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.metrics import MetricWrapperBase

from loadtest.procs import free_port, start_bentoml, stop_process, wait_http
from service.tasks.forecast import metrics as forecast_metrics
from service.tasks.generate import metrics as generate_metrics
from service.tasks.textclf import metrics as textclf_metrics
from service.tasks.translate import metrics as translate_metrics
from training import data

ROOT = Path(__file__).resolve().parents[1]
PROM_DIR = ROOT / "deploy/prometheus"
DASHBOARD = ROOT / "deploy/grafana/seqserve.json"
JV_TEST = ROOT / "data/JapaneseVowels/JapaneseVowels_TEST.ts"

pytestmark = pytest.mark.integration


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail(f"{binary} is missing in CI: .ci/run installs the Debian package 'prometheus'")
    print(f"\nSKIP: {binary} not installed (apt-get install --no-install-recommends prometheus, or make prometheus)")
    pytest.skip(f"{binary} not installed; CI installs it")


def test_promtool_checks_and_rule_unit_tests() -> None:
    promtool = need("promtool")
    for args in (
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "rules/recording.yml", "rules/alerts.yml"],
        ["test", "rules", "tests/alerts_test.yml"],
    ):
        proc = subprocess.run([promtool, *args], cwd=PROM_DIR, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    alerts = {r["alert"] for g in _yaml(PROM_DIR / "rules/alerts.yml")["groups"] for r in g["rules"]}
    tested = set(re.findall(r"alertname: (\w+)", (PROM_DIR / "tests/alerts_test.yml").read_text()))
    assert alerts == tested, f"alerts without a promtool test: {alerts - tested}"
    assert {
        "SeqserveHighErrorRatio",
        "SeqserveLatencyP99OverSLO",
        "SeqserveInputDrift",
        "SeqserveNoModelLoaded",
        "SeqserveCudaRequestedButCPU",
        "SeqserveTargetDown",
    } <= alerts


def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


class Prom:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> list[dict]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]

    def value(self, expr: str) -> float | None:
        res = self.query(expr)
        return float(res[0]["value"][1]) if res else None

    def wait_value(self, expr: str, ok, timeout: float = 40.0) -> float:  # noqa: ANN001
        deadline, v = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            v = self.value(expr)
            if v is not None and ok(v):
                return v
            time.sleep(0.5)
        raise AssertionError(f"{expr} = {v} after {timeout}s")


@pytest.fixture(scope="module")
def stack(artifact: Path, tmp_path_factory: pytest.TempPathFactory):
    """seqserve (2 workers, small drift window) + Prometheus scraping it every second.

    It has a BENTOML_HOME of its own (the model by path): every `bentoml serve` start empties the Prometheus
    multiprocess directory under its home, which would wipe the metrics of the session's other server."""
    prometheus = need("prometheus")
    tmp = tmp_path_factory.mktemp("prom")
    proc, url = start_bentoml(
        ROOT,
        {
            "BENTOML_HOME": str(tmp / "bentoml_home"),
            "SEQSERVE_DATA_DIR": str(tmp / "data"),
            "SEQSERVE_MODEL": str(artifact),
            "SEQSERVE_WORKERS": "2",
            "SEQSERVE_DRIFT_WINDOW_STEPS": "512",
            "SEQSERVE_MAX_LATENCY_MS": "20000",
        },
        tmp / "bentoml.log",
    )
    drift_fast = tmp / "drift_fast.yml"
    drift_fast.write_text(
        "groups:\n- name: test-only\n  rules:\n  - alert: SeqserveInputDriftFast\n"
        "    expr: max by (job, model_version) (seqserve_input_drift_score) > 0.5\n"
        "    for: 2s\n"
    )
    config = tmp / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [
                    str(PROM_DIR / "rules/recording.yml"),
                    str(PROM_DIR / "rules/alerts.yml"),
                    str(drift_fast),
                ],
                "scrape_configs": [{"job_name": "seqserve", "static_configs": [{"targets": [url.split("//")[1]]}]}],
            }
        )
    )
    port = free_port()
    log = tmp / "prometheus.log"
    prom = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
        ],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/-/ready", 60, prom, log)
        yield url, Prom(f"http://127.0.0.1:{port}")
    finally:
        stop_process(prom)
        stop_process(proc)


SENT = {"ok": 0}
BAD = {  # reason -> (body, how many)
    "feature_count": ({"sequences": [[[0.1] * 11] * 4]}, 3),
    "too_long": ({"sequences": [[[0.1] * 12] * 4097]}, 2),  # the artifact's default max_length is 4096
    "non_finite": ({"sequences": [[[1e39] * 12] * 3]}, 2),
    "empty": ({"sequences": [[]]}, 1),
    "sequence_count": ({"sequences": []}, 1),
}


def post(url: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/predict", json=body, timeout=60)


def test_counts_reach_prometheus(stack) -> None:  # noqa: ANN001
    url, prom = stack
    test = data.load(JV_TEST)
    rng = np.random.default_rng(0)
    groups = [[test.sequences[i].tolist() for i in rng.choice(370, size=k)] for k in rng.integers(1, 5, size=30)]
    jobs = [{"sequences": g} for g in groups] + [b for b, n in BAD.values() for _ in range(n)]
    rng.shuffle(jobs)
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda b: post(url, b), jobs))
    n_ok = sum(len(g) for g in groups)
    assert sum(r.status_code == 200 for r in responses) == len(groups)
    assert sum(r.status_code == 400 for r in responses) == sum(n for _, n in BAD.values())
    bad_json = httpx.post(f"{url}/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert bad_json.status_code == 400
    SENT["ok"] = n_ok

    prom.wait_value('sum(seqserve_sequences_total{job="seqserve",outcome="ok"})', lambda v: v == n_ok)
    assert prom.value('sum(seqserve_predictions_total{job="seqserve"})') == n_ok
    assert prom.value('sum(seqserve_sequence_length_steps_count{job="seqserve"})') == n_ok
    assert prom.value('sum(seqserve_batch_size_sequences_sum{job="seqserve"})') == n_ok
    real = sum(len(s) for g in groups for s in g)
    assert prom.value('sum(seqserve_time_steps_total{job="seqserve",kind="real"})') == real
    padded = prom.value('sum(seqserve_time_steps_total{job="seqserve",kind="padded"})')
    assert padded >= real
    prom.wait_value('sum(seqserve_rejected_requests_total{job="seqserve",reason="invalid_json"})', lambda v: v == 1)
    for reason, (_, n) in BAD.items():
        assert prom.value(f'sum(seqserve_rejected_requests_total{{job="seqserve",reason="{reason}"}})') == n, reason
    assert (
        prom.value('sum(bentoml_service_request_total{job="seqserve",endpoint="/predict",http_response_code="400"})')
        == sum(n for _, n in BAD.values()) + 1
    )
    info = prom.query('seqserve_model_info{job="seqserve"}')
    assert info and info[0]["metric"]["provider"] == "CPUExecutionProvider"
    assert info[0]["metric"]["rnn"] == "gru" and info[0]["metric"]["device_requested"] == "auto"
    assert prom.value('sum(seqserve_model_compute_seconds_count{job="seqserve"})') >= 1
    assert prom.value('sum(seqserve_queue_wait_seconds_count{job="seqserve"})') == n_ok
    assert prom.value('count(seqserve_predictions_total{job="seqserve"})') == 9  # one series per class
    # rate()-based recording rules need the counters to move after their first scrape: keep traffic flowing
    more = [{"sequences": [test.sequences[i].tolist() for i in range(k, k + 3)]} for k in range(0, 60, 3)]
    for body in more:
        assert post(url, body).status_code == 200
        time.sleep(0.1)
    eff = prom.wait_value('seqserve:padding_efficiency:ratio1m{job="seqserve"}', lambda v: v > 0)
    assert 0 < eff <= 1
    assert prom.wait_value('seqserve:batch_size_sequences:mean1m{job="seqserve"}', lambda v: v >= 1) <= 64
    assert (
        prom.wait_value('sum(seqserve:requests:rate1m{job="seqserve",http_response_code="200"})', lambda v: v > 0) > 0
    )
    # the shipped "not ready" and "CPU instead of CUDA" alerts see the live series
    assert prom.value('(up{job="seqserve"} == 1) unless on (job, instance) (seqserve_model_info == 1)') is None
    drift = prom.wait_value('max(seqserve_input_drift_score{job="seqserve"})', lambda v: v >= 0)
    assert drift < 0.5  # held-out data from the training distribution


def test_drifted_stream_raises_score_and_fires_alert(stack, artifact: Path) -> None:  # noqa: ANN001
    url, prom = stack
    meta = json.loads((artifact / "metadata.json").read_text())
    std = np.array(meta["normalisation"]["std"], dtype=np.float32)
    test = data.load(JV_TEST)
    before = prom.value('max(seqserve_input_drift_score{job="seqserve"})')
    drifted = [{"sequences": [(test.sequences[i] + 1.5 * std).tolist()]} for i in range(120)]
    with ThreadPoolExecutor(8) as pool:
        assert all(r.status_code == 200 for r in pool.map(lambda b: post(url, b), drifted))
    score = prom.wait_value('max(seqserve_input_drift_score{job="seqserve"})', lambda v: v > 1.0)
    assert score > before + 0.8
    deadline, states = time.monotonic() + 40, []
    while time.monotonic() < deadline:
        alerts = httpx.get(f"{prom.url}/api/v1/alerts").json()["data"]["alerts"]
        states = [a["state"] for a in alerts if a["labels"]["alertname"] == "SeqserveInputDriftFast"]
        if "firing" in states:
            break
        time.sleep(0.5)
    assert "firing" in states, states
    per_feature = prom.query('seqserve_input_drift_feature_zshift{job="seqserve"}')
    assert len({s["metric"]["feature"] for s in per_feature}) == 12


def test_dashboard_panels_query_existing_metrics(stack) -> None:  # noqa: ANN001
    """Every panel's PromQL evaluates in the real Prometheus and names a metric the service exports (or a
    recording rule); every seqserve_ metric family on /metrics has a panel."""
    url, prom = stack
    dash = json.loads(DASHBOARD.read_text())
    assert any(v["type"] == "datasource" and v["query"] == "prometheus" for v in dash["templating"]["list"])
    feedback = {"items": [{"sequence": [[0.1] * 12] * 3, "label": "1"}]}  # so that the feedback series exist
    assert httpx.post(f"{url}/feedback", json=feedback, timeout=60).status_code == 200
    assert httpx.post(f"{url}/predict", json={"sequences": []}).status_code == 400  # ...and the rejection series
    assert httpx.post(f"{url}/predict", json={"sequences": [[[0.1] * 12] * 3]}, timeout=60).status_code == 200
    exported = {m.group(1) for m in re.finditer(r"^([a-zA-Z_:][\w:]*)", httpx.get(f"{url}/metrics").text, re.M)}
    recorded = {r["record"] for g in _yaml(PROM_DIR / "rules/recording.yml")["groups"] for r in g["rules"]}
    # the generation, forecasting and translation panels: their own servers
    known = exported | recorded | {"up"} | _sample_names(generate_metrics) | _sample_names(forecast_metrics)
    known |= _sample_names(translate_metrics) | _sample_names(textclf_metrics)
    mentioned = set()
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            names = {
                n
                for n in re.findall(r"[a-zA-Z_:][\w:]*", re.sub(r'"[^"]*"', "", expr))
                if n.startswith(("seqserve", "bentoml_")) or n == "up"
            }
            assert names and names <= known, (panel["title"], names - known)
            mentioned |= names
            concrete = expr.replace("$job", "seqserve").replace("$__rate_interval", "1m")
            prom.query(concrete)  # valid PromQL (asserts status success)
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in exported if n.startswith("seqserve_")}
    covered = {re.sub(r"_(bucket|sum|count)$", "", n) for n in mentioned}
    rule_text = (PROM_DIR / "rules/recording.yml").read_text()
    missing = {f for f in families if f not in covered and f not in rule_text}
    assert not missing, f"metrics without a dashboard panel: {missing}"


def _sample_names(module: object) -> set[str]:
    """The sample names of the metric families a module defines (a histogram's _bucket/_sum/_count, ...)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    families = [m for v in vars(module).values() if isinstance(v, MetricWrapperBase) for m in v.describe()]
    return {f.name + s for f in families for s in suffixes.get(f.type, ("",))}
