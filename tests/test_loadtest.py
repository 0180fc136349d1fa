"""Smoke tests of the load-test harness: the benchmark driver and Locust, briefly, against real servers."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from loadtest import bench, workload
from loadtest.report import plot_history

ROOT = Path(__file__).resolve().parents[1]
RUN_KEYS = {
    "system",
    "profile",
    "concurrency",
    "req_per_s",
    "seq_per_s",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "errors",
    "padding_efficiency",
}

pytestmark = pytest.mark.integration


def test_workload_profiles() -> None:
    jv = workload.sequences("jv")
    lt = workload.sequences("longtail")
    assert len(jv) == len(lt) == 370
    jl, ll = np.array([len(s) for s in jv]), np.array([len(s) for s in lt])
    assert (jl.min(), jl.max()) == (7, 29)
    long = ll > 29
    assert 0.05 < long.mean() < 0.15 and ll.max() <= workload.LONGTAIL_MAX_LENGTH and ll[long].min() >= 70
    np.testing.assert_array_equal(jl[~long], ll[~long])  # the short ones are untouched
    assert all(np.array_equal(a, b) for a, b in zip(lt, workload.sequences("longtail")))  # deterministic
    s = jv[0]
    st = workload.stretch(s, 10)
    assert len(st) == 10 * len(s)
    np.testing.assert_allclose(st[0], s[0]), np.testing.assert_allclose(st[-1], s[-1])


def test_bench_smoke(small_run: Path, tmp_path: Path) -> None:
    out, report = tmp_path / "results.json", tmp_path / "benchmarks.md"
    bench.main(
        [
            "--systems",
            "limit,seqserve,seqserve-nobatch",
            "--profiles",
            "jv,longtail",
            "--concurrency",
            "1,4",
            "--duration",
            "1",
            "--warmup",
            "0.3",
            "--server-warmup",
            "0.5",
            "--run",
            str(small_run),
            "--work",
            str(tmp_path / "work"),
            "--out",
            str(out),
            "--report",
            str(report),
        ]
    )
    results = json.loads(out.read_text())
    assert {"cpu", "cores", "onnxruntime"} <= set(results["machine"])
    runs = results["runs"]
    assert len(runs) == 2 + 2 * 2 * 2
    for r in runs:
        assert RUN_KEYS <= set(r), r
        assert r["errors"] == 0 and r["seq_per_s"] > 0 and 0 < r["padding_efficiency"] <= 1
        assert r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
    assert {r["system"] for r in runs} == {"limit", "seqserve", "seqserve-nobatch"}
    lt_limit = next(r for r in runs if r["system"] == "limit" and r["profile"] == "longtail")
    assert lt_limit["padding_efficiency"] >= 0.85
    text = report.read_text()
    assert "| system | concurrency | req/s | seq/s |" in text and "## Targets" in text


def test_locust_headless_smoke(server: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "LOADTEST_PROFILE": "jv",
        "LOADTEST_STEPS": "2",
        "LOADTEST_STEP_USERS": "2",
        "LOADTEST_STEP_SECONDS": "2",
    }
    prefix = tmp_path / "jv"
    locust = str(Path(sys.executable).with_name("locust"))
    proc = subprocess.run(
        [
            locust,
            "-f",
            "loadtest/locustfile.py",
            "--headless",
            "--host",
            server,
            "--csv",
            str(prefix),
            "--csv-full-history",
            "--html",
            f"{prefix}.html",
            "--only-summary",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["Name"]: r for r in csv.DictReader(open(f"{prefix}_stats.csv"))}
    agg = rows["Aggregated"]
    assert int(agg["Request Count"]) > 10 and int(agg["Failure Count"]) == 0
    assert Path(f"{prefix}.html").stat().st_size > 1000
    assert plot_history(f"{prefix}_stats_history.csv", tmp_path / "jv.png") >= 2
    assert (tmp_path / "jv.png").read_bytes()[:4] == b"\x89PNG"


def test_locust_refuses_longtail_against_short_model(server: str, tmp_path: Path) -> None:
    env = {**os.environ, "LOADTEST_PROFILE": "longtail", "LOADTEST_STEPS": "1", "LOADTEST_STEP_SECONDS": "1"}
    locust = str(Path(sys.executable).with_name("locust"))
    proc = subprocess.run(
        [locust, "-f", "loadtest/locustfile.py", "--headless", "--host", server],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "export with --max-length" in proc.stderr
