"""Where a model call's time goes in serving-like use, in process: ``python -m loadtest.gpu_probe --device cuda``.

Over HTTP the GPU layout answered far below what the in-process GPU engine does on length-sorted, repeated
batches (bench/results-gpu.json). Serving differs from that loop in three ways, each measured here per
session configuration (ORT threads, memory pattern):

* ``shapes``: a random batch of B sequences has a ``[B, T]`` the session may not have seen: time its first
  call and a second call of the same input, exact shapes vs ``service.core.batching.padding.bucket_shape`` buckets;
* ``cycle``: calls that alternate between a few shapes, all seen before (is only the last shape cached?);
* ``plans``: whole merged batches through ``Engine.infer``: sub-batches by padding efficiency (CPU default)
  vs one call per batch, exact vs bucketed shapes;
* ``threads``: the same call from the main thread, from a new thread each time, from a thread pool.

Writes one JSON (``--out``). ``--device cpu`` runs the same on CPU (a dry run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

from loadtest import workload
from service.core.artifact import find_artifact
from service.core.runtime import CPU, CUDA, CUDA_OPTIONS, session_options
from service.core.settings import Settings
from service.tasks.classify.engine import Engine


def ms(fn) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def summary(values: list[float]) -> dict:
    return {"median_ms": round(statistics.median(values), 3), "mean_ms": round(statistics.fmean(values), 3),
            "max_ms": round(max(values), 3), "n": len(values)}  # fmt: skip


def session(art_path: Path, device: str, threads: int, mem_pattern: bool) -> ort.InferenceSession:
    opts = session_options(threads, quiet=True)
    opts.enable_mem_pattern = mem_pattern
    providers = [(CUDA, CUDA_OPTIONS), CPU] if device == "cuda" else [CPU]
    return ort.InferenceSession(str(art_path / "model.onnx"), opts, providers=providers)


def probe_config(engine: Engine, mixes: dict, rng: np.random.Generator, reps: int) -> dict:
    run = lambda x, lens: engine.session.run(None, {"x": x, "lengths": lens})  # noqa: E731
    out: dict = {"shapes": [], "cycle": {}, "plans": [], "threads": {}}
    for profile, seqs in mixes.items():
        for buckets in (False, True):
            for B in (1, 16, 64, 256):
                first, again = [], []
                for _ in range(reps):
                    x, lens = engine.batch.pad.pad([seqs[i] for i in rng.integers(len(seqs), size=B)], buckets)
                    first.append(ms(lambda x=x, lens=lens: run(x, lens)))
                    again.append(ms(lambda x=x, lens=lens: run(x, lens)))
                row = {"profile": profile, "batch": B, "buckets": buckets}
                out["shapes"].append({**row, "first": summary(first), "again": summary(again)})
    seqs = mixes["jv"]
    batches = [[seqs[i] for i in rng.integers(len(seqs), size=16)] for _ in range(6)]
    padded = [tuple(np.copy(a) for a in engine.batch.pad.pad(b)) for b in batches]
    for x, lens in padded:  # all seen once
        run(x, lens)
    same = [ms(lambda: run(*padded[0])) for _ in range(3 * reps)]
    alternating = [ms(lambda k=k: run(*padded[k % len(padded)])) for k in range(3 * reps)]
    out["cycle"] = {"same_shape": summary(same), "alternating_6_seen_shapes": summary(alternating)}
    base = engine.batching
    for profile, seqs in mixes.items():
        for B in (64, 256):
            merged = [[seqs[i] for i in rng.integers(len(seqs), size=B)] for _ in range(reps)]
            for min_eff, buckets in (
                (0.85, False),
                (0.0, False),
                (0.0, True),
                (0.85, True),
            ):
                engine.batching = replace(base, min_efficiency=min_eff, shape_buckets=buckets)
                times, calls = [], []
                for m in merged:
                    t0 = time.perf_counter()
                    stats = engine.infer(m)[2]
                    times.append((time.perf_counter() - t0) * 1000)
                    calls.append(stats.model_calls)
                row = {"profile": profile, "batch": B, "min_efficiency": min_eff, "buckets": buckets}
                out["plans"].append({**row, **summary(times), "calls_per_batch": statistics.fmean(calls)})
    engine.batching = base
    x, lens = padded[0]
    out["threads"]["main"] = summary([ms(lambda: run(x, lens)) for _ in range(reps)])
    new = []
    for _ in range(reps):
        t = threading.Thread(target=lambda: new.append(ms(lambda: run(x, lens))))
        t.start()
        t.join()
    out["threads"]["new_thread_each_call"] = summary(new)
    with ThreadPoolExecutor(8) as pool:
        pooled = [pool.submit(ms, lambda: run(x, lens)).result() for _ in range(reps)]
    out["threads"]["pool_of_8"] = summary(pooled)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m loadtest.gpu_probe", description=__doc__)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--artifact", required=True)
    p.add_argument("--reps", type=int, default=12)
    p.add_argument("--configs", default="threads1,threads16,threads1-nomempattern")
    p.add_argument("--out", default="bench/gpu-probe.json")
    args = p.parse_args(argv)
    art = find_artifact(args.artifact)
    meta = json.loads((art.path / "metadata.json").read_text())
    mixes = {prof: workload.sequences(prof, meta=meta) for prof in ("jv", "longtail")}
    results: dict = {"device": args.device, "onnxruntime": ort.__version__, "configs": {}}
    for name in args.configs.split(","):
        threads = int(name.split("-")[0].removeprefix("threads"))
        settings = Settings(device=args.device, ort_threads=threads, step_budget=65536, max_sub_batch=512)
        engine = Engine(art, settings)
        engine.session = session(art.path, args.device, threads, mem_pattern="nomempattern" not in name)
        t0 = time.perf_counter()
        results["configs"][name] = probe_config(engine, mixes, np.random.default_rng(0), args.reps)
        results["configs"][name]["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"gpu-probe: {name} done in {results['configs'][name]['seconds']} s", flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
