"""Classification's tail while text generation saturates the same machine (issue 13; ``make bench-mixed``).

Both servers run side by side on the same cores (``make serve`` and ``make serve-generate``, each with its
own API workers and model service). The classifier gets an open loop at ``--fraction`` of its saturation,
first alone, then while ``--streams`` closed-loop generation streams keep the language model busy. Reports
the classifier's p50/p99 both ways and the factor, into ``bench/results-mixed.json`` and
``docs/reliability.md`` (between the ``mixed`` markers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import sys
from pathlib import Path

from loadtest import workload
from loadtest.bench_generate import closed_loop
from loadtest.bench_generate import workload as generate_workload
from loadtest.client import run_load, run_open_loop
from loadtest.peer_servers import json_bodies
from loadtest.procs import machine, start_bentoml, stop_process
from loadtest.soak import write_section

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- mixed:begin (written by make bench-mixed) -->", "<!-- mixed:end -->"


def generation_load(lm: str, port: int, streams: int, seconds: float) -> dict:
    """Closed-loop generation streams for ``seconds`` (after 3 s of warm-up), in a process of its own."""
    return asyncio.run(closed_loop(port, generate_workload(Path(lm), 512), streams, seconds, 3.0))


def measure(args: argparse.Namespace) -> dict:
    work = Path(args.work)
    art, lm = Path(args.artifact).resolve(), Path(args.lm_artifact).resolve()
    meta = json.loads((art / "metadata.json").read_text())
    bodies = json_bodies(workload.sequences("jv", meta=meta))
    common = {"SEQSERVE_DEVICE": "cpu", "SEQSERVE_DATA_DIR": str(work / "data")}
    cls, cls_url = start_bentoml(
        ROOT, {**common, "SEQSERVE_MODEL": str(art), "BENTOML_HOME": str(work / "h1")}, work / "c.log"
    )
    gen, gen_url = start_bentoml(
        ROOT,
        {**common, "SEQSERVE_MODEL": str(lm), "BENTOML_HOME": str(work / "h2")},
        work / "g.log",
        target="service.generate_service:SeqGenerate",
    )
    port, gen_port = int(cls_url.rsplit(":", 1)[1]), int(gen_url.rsplit(":", 1)[1])
    try:
        cap = run_load(port, "/predict", bodies, 64, args.probe, warmup=1.0).summary()["seq_per_s"]
        rate = round(args.fraction * cap, 1)
        alone = run_open_loop(port, "/predict", bodies, rate, args.duration, warmup=2.0).summary()
        total = args.duration + 6.0  # the generation load runs in its own process: it must not slow this client
        with mp.get_context("spawn").Pool(1) as pool:
            pending = pool.apply_async(generation_load, (str(lm), gen_port, args.streams, total - 3))
            with_gen = run_open_loop(port, "/predict", bodies, rate, args.duration, warmup=4.0).summary()
            box = pending.get(timeout=total + 120)
    finally:
        stop_process(cls)
        stop_process(gen)
    return {
        "machine": machine(),
        "classifier_saturation_seq_per_s": cap,
        "offered_seq_per_s": rate,
        "fraction": args.fraction,
        "generation_streams": args.streams,
        "alone": alone,
        "with_generation": with_gen,
        "generation": {k: box.get(k) for k in ("tokens_per_s", "ttft_p99_ms", "errors")},
        "p99_factor": round(with_gen["p99_ms"] / alone["p99_ms"], 2) if alone["p99_ms"] else None,
    }


def render(r: dict) -> str:
    a, w = r["alone"], r["with_generation"]
    return "\n".join(
        [
            BEGIN,
            f"- machine: {r['machine'].get('cpu')}, {r['machine'].get('cores')} cores; {r['machine'].get('date')}",
            f"- classifier: open loop at {r['offered_seq_per_s']} seq/s ({r['fraction']:.0%} of its saturation, "
            f"{r['classifier_saturation_seq_per_s']} seq/s); generation: {r['generation_streams']} closed-loop "
            f"streams ({r['generation']['tokens_per_s']} tokens/s, {r['generation']['errors']} errors)",
            "",
            "| classifier | answered seq/s | p50 ms | p99 ms | errors |",
            "|---|---:|---:|---:|---:|",
            f"| alone | {a['seq_per_s']} | {a['p50_ms']} | {a['p99_ms']} | {a['errors']} |",
            f"| with generation saturating | {w['seq_per_s']} | {w['p50_ms']} | {w['p99_ms']} | {w['errors']} |",
            "",
            f"p99 factor: **{r['p99_factor']}x**",
            END,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.mixed", description=__doc__)
    p.add_argument("--artifact", default="artifacts/default")
    p.add_argument("--lm-artifact", default="artifacts/shakespeare")
    p.add_argument("--fraction", type=float, default=0.3)
    p.add_argument("--streams", type=int, default=64)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--probe", type=float, default=8.0)
    p.add_argument("--work", default="/tmp/seqserve-mixed")
    p.add_argument("--out", default="bench/results-mixed.json")
    args = p.parse_args(argv)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    r = measure(args)
    Path(args.out).write_text(json.dumps(r, indent=2) + "\n")
    write_section(DOC, BEGIN, END, render(r))
    print(render(r))
    print(json.dumps({k: r[k] for k in ("p99_factor", "alone", "with_generation")}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
