"""The GPU visit's first stage (``loadtest/gpu_visit.sh``, stage ``check``): the load-time check of the plain
session, then the fixed call shapes (service/core/batching/shapes.py) opened as the service opens them, without and with
CUDA graphs: per shape the load seconds, GPU memory, parity, and milliseconds per call of a full padded call
(the median of ``--calls``). Writes one JSON document.

    python -m loadtest.gpu_check --artifact artifacts/default --device cuda --out bench/provider-check.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from service.core.artifact import find_artifact
from service.core.settings import Settings
from service.tasks.classify.engine import Engine


def shape_timings(engine: Engine, calls: int) -> list[dict]:
    """ms per call of every shape, all rows filled with sequences of the shape's full length."""
    rng = np.random.default_rng(0)
    out = []
    for b, t in engine.shapes.ladder.shapes:
        seqs = [rng.standard_normal((t, engine.feature_dim)).astype(np.float32) for _ in range(b)]
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            engine.shapes.run(seqs, b, t)
            times.append((time.perf_counter() - t0) * 1000)
        out.append({"shape": [b, t], "ms_per_call": round(float(np.median(times)), 3)})
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m loadtest.gpu_check", description=__doc__)
    p.add_argument("--artifact", required=True)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--graph", default="off,on", help="CUDA graph settings to try, in order")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    art = find_artifact(args.artifact)
    result: dict = {"artifact": args.artifact, "device": args.device}
    for graph in args.graph.split(","):
        settings = Settings(device=args.device, fixed_shapes="on", cuda_graph=graph == "on")
        t0 = time.perf_counter()
        try:
            engine = Engine(art, settings)
        except Exception as e:  # noqa: BLE001 - report it and go on with the next setting
            result[f"graph_{graph}"] = {"error": f"{type(e).__name__}: {str(e)[:800]}"}
            continue
        entry = {
            "provider": engine.provider,
            "provider_options": engine.info.provider_options,
            "check": engine.info.check,
            "open_seconds": round(time.perf_counter() - t0, 2),
            "shapes": engine.shapes.report,
            "timings": shape_timings(engine, args.calls),
        }
        result.setdefault("provider", engine.provider)
        result[f"graph_{graph}"] = entry
        del engine
        Path(args.out).write_text(json.dumps(result, indent=1))  # a cut-off run keeps what it measured
    Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
