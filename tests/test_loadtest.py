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


def test_workload_fits_a_users_model(tmp_path: Path) -> None:
    """Against a model that is not JapaneseVowels: the user's data if given, else sequences built from /metadata."""
    meta = {"feature_dim": 2, "max_length": 4096, "training_length_range": [30, 90], "normalisation": "series"}
    what, seqs = workload.source(meta)
    assert "generated" in what and len(seqs) == 370
    assert all(s.shape[1] == 2 and 30 <= len(s) <= 90 and s.dtype == np.float32 for s in seqs)
    data = tmp_path / "mine.jsonl"
    data.write_text("\n".join(json.dumps({"sequence": [[0.5, 1.0]] * n, "label": "a"}) for n in (3, 5, 8)))
    what, seqs = workload.source(meta, data)
    assert what == str(data) and [len(s) for s in seqs] == [3, 5, 8]
    with pytest.raises(ValueError, match="2 features, the served model expects 12"):
        workload.source({**meta, "feature_dim": 12}, data)
    assert len(workload.sequences("longtail", meta=meta)) == 370


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
            "--open-loop",
            "0.3",
            "--open-duration",
            "1",
            "--open-repeats",
            "1",
        ]
    )
    results = json.loads(out.read_text())
    assert {"cpu", "cores", "onnxruntime"} <= set(results["machine"])
    runs = results["runs"]
    opened = [r for r in runs if r.get("mode") == "open"]  # the equal-load pass (here seqserve alone), errors only
    assert len(opened) == 2 and all(r["errors"] == 0 and r["p99_ms"] > 0 for r in opened), opened
    assert (report.parent / "img" / "latency-vs-load.png").stat().st_size > 0
    runs = [r for r in runs if r.get("mode") != "open"]
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


def test_open_loop_client_keeps_its_arrival_rate(server: str) -> None:
    """Requests leave at the fixed rate whatever the answers do; latency counts from each due time."""
    from loadtest.client import run_open_loop

    port = int(server.rsplit(":", 1)[1])
    bodies = [(workload.json_body([s]), 1) for s in workload.sequences("jv")[:50]]
    res = run_open_loop(port, "/predict", bodies, rate=80, duration=1.5, warmup=0.3)
    assert res.errors == 0 and 100 <= res.requests <= 125  # 80/s x 1.5 s, give or take one at the edges
    s = res.summary()
    assert 0 < s["p50_ms"] <= s["p99_ms"]


def test_gpu_bench_dry_run_on_cpu(artifact: Path, tmp_path: Path) -> None:
    """The GPU benchmark's one command, run on CPU (a GPU machine runs the same with --device cuda)."""
    from loadtest import gpu_bench

    out = tmp_path / "results-gpu.json"
    argv = ["--device", "cpu", "--artifact", str(artifact), "--layouts", "gpu,gpu-inprocess", "--profiles", "jv"]
    argv += ["--concurrency", "2", "--sequences-per-request", "1,4", "--duration", "0.6", "--warmup", "0.2"]
    argv += ["--server-warmup", "0.3", "--clients", "2", "--api-workers", "1", "--inprocess-batches", "8"]
    results = gpu_bench.main([*argv, "--work", str(tmp_path / "work"), "--out", str(out)])
    assert json.loads(out.read_text()) == results and "failed" not in results
    assert {"device", "onnxruntime", "gpu", "cuda", "cudnn"} <= set(results["machine"])
    http = [r for r in results["runs"] if r["mode"] == "closed"]
    assert [(r["layout"], r["sequences_per_request"]) for r in http] == [("gpu", 1), ("gpu", 4)]
    for r in http:
        assert r["errors"] == 0 and r["seq_per_s"] > 0 and r["p50_ms"] <= r["p99_ms"]
        assert r["provider"] == "CPUExecutionProvider" and r["concurrency"] == 2
    (inproc,) = [r for r in results["runs"] if r["mode"] == "inprocess"]
    assert inproc["batch"] == 8 and inproc["seq_per_s"] > 0


def test_classifier_cost_smoke(tmp_path: Path) -> None:
    """The serving-cost script of the kernel branch: both graphs exported by the real exporter and timed, per shape."""
    from loadtest.classifier_cost import main

    out = tmp_path / "cost.json"
    args = ["--lengths", "40,60", "--batches", "1,3", "--channels", "2", "--repeats", "1", "--json", str(out)]
    assert main(args) == 0
    res = json.loads(out.read_text())
    assert res["channels"] == 2 and [(r["length"], r["batch"]) for r in res["rows"]] == [
        (40, 1),
        (40, 3),
        (60, 1),
        (60, 3),
    ]
    assert all(r["without"] > 0 and r["with"] > 0 and r["ratio"] == r["with"] / r["without"] for r in res["rows"])


def test_bench_generate_smoke(lm_artifact: Path, tmp_path: Path) -> None:
    """make bench-generate in miniature: every system over real HTTP, the in-process limits, the report section."""
    from loadtest.bench_generate import generate_section, main

    out = tmp_path / "results-generate.json"
    res = main(
        ["--artifact", str(lm_artifact), "--concurrency", "4", "--duration", "2", "--warmup", "0.5"]
        + ["--out", str(out), "--work", str(tmp_path / "work"), "--capacity", "64"]
    )
    assert json.loads(out.read_text())["runs"] == res["runs"]
    assert [r["system"] for r in res["runs"]] == ["per-request", "request-batching", "step-batching"]
    for r in res["runs"]:
        assert r["errors"] == 0 and r["tokens_per_s"] > 0 and r["ttft_p50_ms"] is not None, r
    assert res["scheduler_in_process"]["tokens_per_s"] > 0
    text = "\n".join(generate_section(res))
    assert "| step-batching | 4 |" in text and "In-process step limit" in text


def test_soak_for_a_minute_has_no_errors(artifact: Path, tmp_path: Path) -> None:
    """``make soak`` for 60 s (CI): zero errors; its timings are for the benchmark, not asserted here."""
    cmd = [sys.executable, "-m", "loadtest.soak", "--artifact", str(artifact), "--duration", "60", "--window", "15"]
    cmd += ["--warmup", "15", "--probe", "5", "--work", str(tmp_path), "--check"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["errors"] == 0 and summary["requests"] > 1000, summary


def test_profile_tail_runs_short(artifact: Path, tmp_path: Path) -> None:
    """``make profile-tail`` for a few seconds (CI): every request answered and every stage measured; the
    figures themselves are for the benchmark, not asserted here."""
    out = tmp_path / "tail.json"
    cmd = [sys.executable, "-m", "loadtest.profile_tail", "--artifact", str(artifact), "--profiles", "jv"]
    cmd += ["--rates", "40", "--duration", "3", "--warmup", "1", "--work", str(tmp_path / "work"), "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    (run,) = json.loads(out.read_text())["runs"]
    assert run["client"]["errors"] == 0 and run["client"]["requests"] >= 100, run["client"]
    for stage, figures in run["stages"].items():
        assert figures["requests"] >= run["client"]["requests"] and figures["p99_ms"] is not None, stage
    assert "to_batch" in done.stdout and "total" in done.stdout


def test_bench_mixed_runs_short(artifact: Path, lm_artifact: Path, tmp_path: Path) -> None:
    """``make bench-mixed`` in a few seconds per phase (CI): the classifier alone, generation alone, both, and
    both with the isolation setting, every request answered; the timings are for the benchmark."""
    out = tmp_path / "mixed.json"
    cmd = [sys.executable, "-m", "loadtest.mixed", "--artifact", str(artifact), "--lm-artifact", str(lm_artifact)]
    cmd += ["--duration", "3", "--probe", "2", "--streams", "4", "--work", str(tmp_path / "w"), "--out", str(out)]
    done = subprocess.run([*cmd, "--doc", ""], cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    r = json.loads(out.read_text())
    iso = r["isolated"]
    for run in (r["alone"], r["with_generation"], iso["with_generation"]):
        assert run["errors"] == 0 and run["requests"] > 0, run
    for gen in (r["generation_alone"], r["generation"], iso["generation"]):
        assert gen["errors"] == 0 and gen["tokens_per_s"] > 0, gen
    assert iso["setting"].startswith("SEQSERVE_CPUS=") and iso["alone"]["errors"] == 0 and iso["p99_factor"]


def test_make_loadtest_names_results_after_the_data() -> None:
    """Issue 29 (8): ``make loadtest DATA=...`` wrote (and overwrote) loadtest/results/jv_* for any data."""
    import subprocess

    def plan(*args: str) -> str:
        out = subprocess.run(["make", "-n", "loadtest", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    mine = plan("DATA=/somewhere/waves_TRAIN.ts", "PORT=3007")
    assert "--csv loadtest/results/waves_TRAIN_jv " in mine and "results/jv" not in mine, mine
    assert "--host http://127.0.0.1:3007" in mine
    assert "--csv loadtest/results/jv " in plan()
