"""``make bench``: seqserve vs NVIDIA Triton vs Ray Serve, same model, same client, same load, one run.

Systems: ``limit`` (the in-process engine on pre-sorted batches, no HTTP), ``seqserve`` (HTTP, adaptive +
length-aware batching), ``seqserve-nobatch`` (same server, ``/predict_nobatch``), ``triton`` (nvidia-pytriton,
ORT in a ``@batch`` function, dynamic batcher), ``ray-serve`` (``@serve.batch``). Peers are installed into
their own git-ignored venvs under ``bench/venvs/`` (never seqserve dependencies), bound to 127.0.0.1, and
stopped by PID; Ray runs with its client in a private network namespace (``unshare -n``) because one of its
ports binds every interface. Writes ``bench/results.json``, ``docs/benchmarks.md`` and ``docs/img/latency-vs-load.png``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from loadtest import workload
from loadtest.client import run_load
from loadtest.gpu_report import report_sections
from loadtest.open_loop import open_loop_pass
from loadtest.peer_servers import Server, ensure_venv, json_bodies, start_ray, start_triton, v2_binary_bodies
from loadtest.plots import latency_vs_load
from loadtest.procs import machine, start_bentoml, stop_process
from loadtest.report import render_report

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
SYSTEMS = ("limit", "seqserve", "seqserve-nobatch", "seqserve-v2", "triton", "ray-serve")


# ---------------------------------------------------------------- inputs
def prepare_artifact(work: Path, run: Path | None = None) -> Path:
    """Export ``run`` (default: runs/default, trained first if missing) into ``work/artifact``; the explicit
    max_length pins the accepted lengths to what the long-tail profile needs, whatever the export default."""
    if run is None:
        run = ROOT / "runs/default"
        if not (run / "checkpoint.pt").exists():
            subprocess.run([PY, "-m", "training", "train", "--out", str(run), "--quiet"], cwd=ROOT, check=True)
    art = work / "artifact"
    argv = ["--run", str(run), "--out", str(art), "--no-store", "--max-length", str(workload.LONGTAIL_MAX_LENGTH)]
    subprocess.run([PY, "-m", "export", *argv], cwd=ROOT, check=True, capture_output=True)
    return art


# ---------------------------------------------------------------- systems
def time_engine(engine, chunks: list[list[np.ndarray]], duration: float) -> dict:  # noqa: ANN001
    """``engine.infer`` on each chunk in turn for ``duration`` seconds (after one warm-up call)."""
    engine.infer(chunks[0])
    n = real = padded = calls = 0
    lat: list[float] = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < duration:
        for c in chunks:
            t1 = time.perf_counter()
            _, _, st = engine.infer(c)
            lat.append((time.perf_counter() - t1) * 1000)
            n, real, padded, calls = n + len(c), real + st.real_steps, padded + st.padded_steps, calls + st.model_calls
    dt = time.perf_counter() - t0
    return {
        "req_per_s": round(len(lat) / dt, 1),
        "seq_per_s": round(n / dt, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p95_ms": round(float(np.percentile(lat, 95)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "errors": 0,
        "requests": len(lat),
        "padding_efficiency": round(real / padded, 3),
        "mean_batch": round(n / calls, 1),
    }


def measure_limit(art: Path, seqs: list[np.ndarray], duration: float, threads: int) -> dict:
    from service.core.artifact import find_artifact
    from service.core.settings import Settings
    from service.tasks.classify.engine import Engine

    engine = Engine(find_artifact(str(art)), Settings(device="cpu", ort_threads=threads))
    order = sorted(seqs, key=len)
    chunks = [order[i : i + 128] for i in range(0, len(order), 128)]
    return {**time_engine(engine, chunks, duration), "note": "engine.infer on length-sorted chunks of 128, no HTTP"}


def metrics_stats(url: str) -> dict:
    """Cumulative batch counters from seqserve's /metrics (summed over workers)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    out = {"batches": 0.0, "sequences": 0.0, "real_steps": 0.0, "padded_steps": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "seqserve_time_steps_total":
                out[f"{sample.labels['kind']}_steps"] += sample.value
            elif sample.name == "seqserve_model_calls_total":
                out["batches"] += sample.value
            elif sample.name == "seqserve_batch_size_sequences_sum":
                out["sequences"] += sample.value
    return out


def start_seqserve(art: Path, work: Path, args: argparse.Namespace) -> Server:
    env = {
        "SEQSERVE_MODEL": str(art),
        "SEQSERVE_DEVICE": "cpu",
        "SEQSERVE_WORKERS": str(args.workers),
        "SEQSERVE_MODEL_WORKERS": str(args.model_workers),
        "SEQSERVE_ORT_THREADS": str(args.seqserve_ort_threads or args.ort_threads),
        "BENTOML_HOME": str(work / "bentoml_home"),
        "SEQSERVE_DATA_DIR": str(work / "data"),
    }
    proc, url = start_bentoml(ROOT, env, work / "seqserve.log")
    return Server(
        int(url.rsplit(":", 1)[1]),
        json_bodies,
        lambda: metrics_stats(url),
        lambda: stop_process(proc),
        {
            "seqserve": "/predict",
            "seqserve-nobatch": "/predict_nobatch",
            "seqserve-v2": f"/v2/models/{json.loads((art / 'metadata.json').read_text())['model_name']}/infer",
        },
        {"seqserve-v2": v2_binary_bodies},
    )


STARTERS = {"seqserve": start_seqserve, "triton": start_triton, "ray-serve": start_ray}


def run_system(name: str, art: Path, work: Path, args: argparse.Namespace, mixes: dict) -> list[dict]:
    server = STARTERS[name](art, work, args)
    runs = []
    try:
        # Unrecorded warm-up for every system alike (BentoML's dispatcher, for one, starts by learning timings).
        for system, path in server.paths.items():
            warm = server.encoders.get(system, server.encode)(next(iter(mixes.values())))
            run_load(server.port, path, warm, 16, args.server_warmup, warmup=0)
        for system, path in server.paths.items():
            if system not in args.systems:
                continue
            for profile, seqs in mixes.items():
                bodies = server.encoders.get(system, server.encode)(seqs)
                for c in args.concurrency:
                    before = server.stats()
                    res = run_load(server.port, path, bodies, c, args.duration, args.warmup)
                    after = server.stats()
                    d = {k: after[k] - before[k] for k in after}
                    run = {
                        "system": system,
                        "profile": profile,
                        "mode": "closed",
                        "concurrency": c,
                        **res.summary(),
                        "padding_efficiency": round(d["real_steps"] / d["padded_steps"], 3)
                        if d["padded_steps"]
                        else None,
                        "mean_batch": round(d["sequences"] / d["batches"], 1) if d["batches"] else None,
                    }
                    if res.first_error:
                        run["first_error"] = res.first_error
                    print(f"bench: {json.dumps(run)}", file=sys.stderr, flush=True)
                    runs.append(run)
        if {"seqserve", "seqserve-v2"} <= set(args.systems) and {"seqserve", "seqserve-v2"} <= set(server.paths):
            runs += ab_pairs(server, args, mixes)
    finally:
        server.stop()
    return runs


def ab_pairs(server: Server, args: argparse.Namespace, mixes: dict) -> list[dict]:
    """JSON /predict and V2 binary in alternating order (A B B A ...), same server, highest concurrency."""
    c, runs = max(args.concurrency), []
    for profile, seqs in mixes.items():
        for k in range(args.ab_rounds):
            for system in ("seqserve", "seqserve-v2")[:: 1 if k % 2 == 0 else -1]:
                bodies = server.encoders.get(system, server.encode)(seqs)
                res = run_load(server.port, server.paths[system], bodies, c, args.duration, args.warmup)
                run = {"system": system, "profile": profile, "mode": "ab", "round": k, "concurrency": c}
                runs.append({**run, **res.summary()})
                print(f"bench: {json.dumps(runs[-1])}", file=sys.stderr, flush=True)
    return runs


def run_ray_in_netns(work: Path, args: argparse.Namespace, argv: list[str]) -> list[dict]:
    """Install Ray's venv (needs the network), then rerun this driver for Ray alone inside ``unshare -n``."""
    import onnxruntime

    ensure_venv("ray", ["ray[serve]==2.60.0", f"onnxruntime=={onnxruntime.__version__}", "numpy"])
    partial = work / "ray_runs.json"
    inner = [
        PY,
        "-m",
        "loadtest.bench",
        *argv,
        "--systems",
        "ray-serve",
        "--inside-netns",
        "--partial",
        str(partial),
        "--artifact",
        str(work / "artifact"),
    ]
    cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *inner]
    subprocess.run(cmd, cwd=ROOT, check=True)
    return json.loads(partial.read_text())


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__)
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--profiles", default=",".join(workload.PROFILES))
    p.add_argument("--concurrency", default="1,16,64")
    p.add_argument("--duration", type=float, default=12.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each run")
    p.add_argument("--server-warmup", type=float, default=4.0, help="unrecorded seconds after each start")
    p.add_argument(
        "--ab-rounds",
        type=int,
        default=4,
        help="interleaved seqserve (JSON) / seqserve-v2 pairs at the highest concurrency, per profile: the V2 "
        "target is judged on their medians (run-to-run noise on 2 shared cores exceeds the difference)",
    )
    p.add_argument("--workers", type=int, default=2, help="workers / instances / replicas, for every system")
    p.add_argument("--ort-threads", type=int, default=1, help="ORT intra-op threads per worker, every system")
    p.add_argument("--model-workers", type=int, default=1, help="seqserve: model service workers (API: --workers)")
    p.add_argument(
        "--seqserve-ort-threads", type=int, default=0, help="seqserve: ORT threads per model worker (0: --ort-threads)"
    )
    p.add_argument("--run", default=None, help="training run to export (default runs/default, trained if missing)")
    p.add_argument(
        "--data",
        default=None,
        help="a .ts/.jsonl file to send (default: JapaneseVowels if the model takes 12 features, else sequences "
        "generated from the model's metadata)",
    )
    p.add_argument("--artifact", default=None, help="use this exported artifact instead")
    p.add_argument("--work", default="bench/work")
    p.add_argument("--out", default="bench/results.json")
    p.add_argument("--report", default="docs/benchmarks.md")
    p.add_argument(
        "--open-loop",
        default="0.5,0.8",
        help="open-loop runs at these fractions of the lower seqserve/Triton capacity ('' for none)",
    )
    p.add_argument("--open-duration", type=float, default=8.0, help="measured seconds per open-loop run")
    p.add_argument("--open-repeats", type=int, default=3, help="open-loop runs per rate (median reported)")
    p.add_argument("--inside-netns", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--partial", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.systems = [s for s in args.systems.split(",") if s]
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
        p.error(f"unknown systems {sorted(unknown)}; choose from {SYSTEMS}")
    args.profiles = [s for s in args.profiles.split(",") if s]
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.open_loop = [float(f) for f in args.open_loop.split(",") if f]
    return args


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    work = (ROOT / args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.artifact:
        art = Path(args.artifact)
    elif args.run:
        art = prepare_artifact(work, Path(args.run))
    else:
        art = prepare_artifact(work)
    meta = json.loads((art / "metadata.json").read_text())
    mixes = {p: workload.sequences(p, meta=meta, data=args.data) for p in args.profiles}
    runs: list[dict] = []
    if "limit" in args.systems:
        for profile, seqs in mixes.items():
            r = measure_limit(art, seqs, max(2.0, args.duration / 2), args.workers * args.ort_threads)
            runs.append({"system": "limit", "profile": profile, "concurrency": None, **r})
            print(f"bench: {json.dumps(runs[-1])}", file=sys.stderr, flush=True)
    if {"seqserve", "seqserve-nobatch", "seqserve-v2"} & set(args.systems):
        runs += run_system("seqserve", art, work, args, mixes)
    skipped: dict[str, str] = {}
    for peer in ("triton", "ray-serve"):
        if peer not in args.systems:
            continue
        try:  # a peer that cannot be installed or started is reported, not fatal
            if peer == "ray-serve" and not args.inside_netns:
                runs += run_ray_in_netns(work, args, strip_systems(argv))
            else:
                runs += run_system(peer, art, work, args, mixes)
        except (OSError, RuntimeError, TimeoutError, subprocess.CalledProcessError) as e:
            skipped[peer] = f"{type(e).__name__}: {str(e)[-500:]}"
            print(f"bench: {peer} skipped: {skipped[peer]}", file=sys.stderr, flush=True)
    if args.open_loop and not args.inside_netns:
        runs += open_loop_pass(lambda name: STARTERS[name](art, work, args), args, mixes, runs)
    if args.partial:
        Path(args.partial).write_text(json.dumps(runs))
        return {"runs": runs}
    results = {
        "machine": machine(),
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "workers": args.workers,
            "ort_threads": args.ort_threads,
            "seqserve_model_workers": args.model_workers,
            "seqserve_ort_threads": args.seqserve_ort_threads or args.ort_threads,
            "sequences_per_request": 1,
            "data": workload.source(meta, args.data)[0],
            "model": json.loads((art / "metadata.json").read_text())["rnn"],
            "total_seconds": round(time.perf_counter() - t0, 1),
        },
        "skipped": skipped,
        "runs": runs,
    }
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    report = ROOT / args.report
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(render_report(results, report_sections()))
    plot = latency_vs_load(results, report.parent / "img" / "latency-vs-load.png")  # docs/performance.md shows it
    print(f"bench: wrote {out}, {report} and {plot} in {results['settings']['total_seconds']} s", file=sys.stderr)
    return results


def strip_systems(argv: list[str]) -> list[str]:
    """argv without any --systems option (the Ray rerun sets its own)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--systems":
            skip = True
        elif not a.startswith("--systems="):
            out.append(a)
    return out


if __name__ == "__main__":
    main()
