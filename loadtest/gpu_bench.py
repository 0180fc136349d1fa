"""``make bench-gpu`` (``python -m loadtest.gpu_bench --device cuda``): CPU layout vs GPU layout vs the in-process
GPU engine, on one machine, the same client and workloads. Writes ``bench/results-gpu.json``.

Layouts (both are the composed services of service/service.py, built from the same commit):

* ``cpu``: ``SEQSERVE_DEVICE=cpu``, ``--api-workers`` API workers, ``--cpu-model-workers`` model workers with
  ``--cpu-ort-threads`` ORT threads each;
* ``gpu``: ``SEQSERVE_DEVICE=cuda`` (``--device``), the same API workers, ``--gpu-model-workers`` model workers
  sharing the GPU (each with its own fixed-shape sessions, service/core/batching/shapes.py);
* ``gpu-inprocess``: the engine alone (no HTTP) on length-sorted batches of ``--inprocess-batches`` sequences.

Load: jv and longtail (loadtest/workload.py), closed loop at each ``--concurrency``, with 1 and 16 sequences per
request, spread over ``--clients`` client processes (one asyncio client cannot keep a 16-core server busy).
On a machine without a GPU, ``--device cpu`` runs the same script end to end (a dry run: every layout on CPU).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np

from loadtest import workload
from loadtest.bench import time_engine
from loadtest.client import run_load
from loadtest.procs import start_bentoml, stop_process

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = ("cpu", "gpu", "gpu-inprocess")


def gpu_machine(device: str) -> dict:
    import onnxruntime as ort

    info = {"device": device, "cpus": os.cpu_count(), "onnxruntime": ort.__version__}
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
        info["gpu"], info["driver"], info["gpu_memory"] = [x.strip() for x in out.splitlines()[0].split(",")]
    except (OSError, IndexError, ValueError, subprocess.SubprocessError):
        info["gpu"] = None
    try:
        import torch

        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
    except ImportError:
        info["cuda"] = info["cudnn"] = None
    return info


def _client(job: tuple) -> dict:
    port, path, bodies, conns, duration, warmup = job
    res = run_load(port, path, bodies, conns, duration, warmup)
    return {"requests": res.requests, "sequences": res.sequences, "errors": res.errors, "lat": res.latencies_ms}


def load(port: int, path: str, bodies: list, concurrency: int, args: argparse.Namespace) -> dict:
    """Closed-loop load from several client processes; merged throughput and latency percentiles."""
    procs = max(1, min(args.clients, concurrency))
    conns = [concurrency // procs + (i < concurrency % procs) for i in range(procs)]
    jobs = [(port, path, bodies[i::procs] or bodies, c, args.duration, args.warmup) for i, c in enumerate(conns)]
    with mp.get_context("spawn").Pool(procs) as pool:
        parts = pool.map(_client, jobs)
    lat = np.concatenate([np.asarray(p["lat"]) for p in parts]) if any(p["lat"] for p in parts) else np.array([np.nan])
    return {
        "seq_per_s": round(sum(p["sequences"] for p in parts) / args.duration, 1),
        "req_per_s": round(sum(p["requests"] for p in parts) / args.duration, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "errors": sum(p["errors"] for p in parts),
    }


def bodies_for(seqs: list[np.ndarray], per_request: int) -> list[tuple[bytes, int]]:
    return [
        (workload.json_body(seqs[i : i + per_request]), len(seqs[i : i + per_request]))
        for i in range(0, len(seqs) - per_request + 1, per_request)
    ]


def http_layout(layout: str, art: Path, work: Path, mixes: dict, args: argparse.Namespace) -> list[dict]:
    gpu = layout == "gpu"
    env = {
        "SEQSERVE_MODEL": str(art),
        "SEQSERVE_DEVICE": args.device if gpu else "cpu",
        "SEQSERVE_WORKERS": str(args.api_workers),
        "SEQSERVE_MODEL_WORKERS": str(args.gpu_model_workers if gpu else args.cpu_model_workers),
        "SEQSERVE_ORT_THREADS": str(args.gpu_ort_threads if gpu else args.cpu_ort_threads),
        "SEQSERVE_MAX_BATCH_SIZE": str(args.gpu_max_batch if gpu else 256),
        "SEQSERVE_MAX_SUB_BATCH": str(args.gpu_max_batch if gpu else 128),
        "SEQSERVE_STEP_BUDGET": str(args.gpu_step_budget if gpu else 8192),
        "BENTOML_HOME": str(work / f"home-{layout}"),
        "SEQSERVE_DATA_DIR": str(work / f"data-{layout}"),
    }
    if gpu:
        env.update(kv.split("=", 1) for kv in args.gpu_env.split())
    proc, url = start_bentoml(ROOT, env, work / f"{layout}.log", timeout=300)
    port = int(url.rsplit(":", 1)[1])
    runs = []
    try:
        with urllib.request.urlopen(url + "/metadata", timeout=30) as r:
            meta = json.loads(r.read())
        warm = bodies_for(next(iter(mixes.values())), 1)
        run_load(port, "/predict", warm, 16, args.server_warmup, warmup=0)
        for profile, seqs in mixes.items():
            for spr in args.sequences_per_request:
                bodies = bodies_for(seqs, spr)
                for c in args.concurrency:
                    r = load(port, "/predict", bodies, c, args)
                    run = {"layout": layout, "provider": meta.get("provider"), "profile": profile}
                    if gpu and args.gpu_env:
                        run["gpu_env"] = args.gpu_env
                    run.update({"concurrency": c, "sequences_per_request": spr, "mode": "closed", **r})
                    print(f"bench-gpu: {json.dumps(run)}", file=sys.stderr, flush=True)
                    runs.append(run)
        with urllib.request.urlopen(url + "/metrics", timeout=30) as r:  # batch sizes, calls, compute seconds
            (work / f"{layout}{'-' + args.tag if args.tag else ''}.metrics").write_bytes(r.read())
    finally:
        stop_process(proc)
    return runs


def inprocess(art: Path, mixes: dict, args: argparse.Namespace) -> list[dict]:
    """The engine alone with the device's default settings (on CUDA: the fixed call shapes), fed
    length-sorted batches of each size: the most the HTTP layouts could get out of it."""
    from service.core.artifact import find_artifact
    from service.core.settings import Settings
    from service.tasks.classify.engine import Engine

    runs = []
    engine = Engine(find_artifact(str(art)), Settings(device=args.device))
    for batch in args.inprocess_batches:
        for profile, seqs in mixes.items():
            pool = seqs * -(-4 * batch // len(seqs))  # repeated: at least 4 full batches of any size
            order = sorted(pool, key=len)
            chunks = [order[i : i + batch] for i in range(0, len(order), batch)]  # the longest too
            seq_per_s = time_engine(engine, chunks, args.duration / 2)["seq_per_s"]
            run = {"layout": "gpu-inprocess", "provider": engine.provider, "profile": profile, "batch": batch}
            run.update({"seq_per_s": seq_per_s, "mode": "inprocess"})
            print(f"bench-gpu: {json.dumps(run)}", file=sys.stderr, flush=True)
            runs.append(run)
    return runs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    cores = os.cpu_count() or 2
    p = argparse.ArgumentParser(prog="python -m loadtest.gpu_bench", description=__doc__)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a dry run of the same script")
    p.add_argument("--artifact", required=True, help="exported artifact directory (make export)")
    p.add_argument("--data", default=None, help=".ts/.jsonl to send (default: see loadtest/workload.py)")
    p.add_argument("--layouts", default=",".join(LAYOUTS))
    p.add_argument("--profiles", default=",".join(workload.PROFILES))
    p.add_argument("--concurrency", default="1,64,256")
    p.add_argument("--sequences-per-request", default="1,16")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--server-warmup", type=float, default=3.0)
    p.add_argument("--clients", type=int, default=max(1, cores // 4), help="client processes")
    p.add_argument("--api-workers", type=int, default=max(1, cores // 2))
    p.add_argument("--cpu-model-workers", type=int, default=max(1, cores // 4))
    p.add_argument("--cpu-ort-threads", type=int, default=2)
    p.add_argument("--gpu-ort-threads", type=int, default=1)
    p.add_argument("--gpu-model-workers", type=int, default=4, help="the GPU overlay's SEQSERVE_MODEL_WORKERS")
    p.add_argument("--gpu-max-batch", type=int, default=512, help="adaptive batch and sub-batch limit on the GPU")
    p.add_argument("--gpu-step-budget", type=int, default=65536, help="max B x T of one GPU call")
    p.add_argument("--gpu-env", default="", help="extra settings of the gpu layout: 'SEQSERVE_X=1 SEQSERVE_Y=2'")
    p.add_argument("--tag", default="", help="names this run's /metrics snapshots (WORK/LAYOUT-TAG.metrics)")
    p.add_argument("--inprocess-batches", default="1,16,128,1024")
    p.add_argument("--work", default="bench/work-gpu")
    p.add_argument("--out", default="bench/results-gpu.json")
    args = p.parse_args(argv)
    args.layouts = [x for x in args.layouts.split(",") if x]
    args.profiles = [x for x in args.profiles.split(",") if x]
    args.concurrency = [int(x) for x in args.concurrency.split(",")]
    args.sequences_per_request = [int(x) for x in args.sequences_per_request.split(",")]
    args.inprocess_batches = [int(x) for x in args.inprocess_batches.split(",")]
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    work = (ROOT / args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    art = Path(args.artifact).resolve()
    meta = json.loads((art / "metadata.json").read_text())
    mixes = {p: workload.sequences(p, meta=meta, data=args.data) for p in args.profiles}
    results = {"machine": gpu_machine(args.device), "settings": {k: v for k, v in vars(args).items()}, "runs": []}
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    for layout in args.layouts:
        try:
            runs = (
                inprocess(art, mixes, args)
                if layout == "gpu-inprocess"
                else http_layout(layout, art, work, mixes, args)
            )
        except Exception as e:  # noqa: BLE001 - keep what the other layouts measured
            results.setdefault("failed", {})[layout] = f"{type(e).__name__}: {str(e)[-800:]}"
            print(f"bench-gpu: {layout} failed: {e}", file=sys.stderr, flush=True)
            runs = []
        results["runs"] += runs
        out.write_text(json.dumps(results, indent=2))  # after every layout: a cut-off run keeps its figures
    print(f"bench-gpu: wrote {out}", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
