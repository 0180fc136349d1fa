"""Classification's tail while text generation saturates the same machine (issues 13, 26; ``make bench-mixed``).

Both servers run side by side on the same cores (``make serve`` and ``make serve-generate``, each with its
own API workers and model service). The classifier gets an open loop at ``--fraction`` of its saturation,
first alone, then while ``--streams`` closed-loop generation streams keep the language model busy; generation
is also measured alone. Then both are restarted with the isolation setting, ``SEQSERVE_CPUS`` splitting the
cores between them (the classifier the first half, generation the rest; the classifier's load client keeps to
the classifier's cores), and the classifier is measured alone and mixed again.
Reports the classifier's p50/p99 each way, its p99 factor, and the share of its lone throughput generation
keeps, into ``bench/results-mixed.json`` (the isolated run under ``isolated``) and ``docs/reliability.md``
(between the ``mixed`` markers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
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
    """Closed-loop generation streams for ``seconds`` (after 3 s of warm-up), in a process of its own at idle
    CPU priority in every phase: it stands in for clients on other machines, and reading 6,000 tokens/s of
    server-sent events would otherwise take the classifier's CPU on these shared cores as no real client would."""
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    return asyncio.run(closed_loop(port, generate_workload(Path(lm), 512), streams, seconds, 3.0))


def mixed_run(port: int, bodies: list, rate: float, lm: Path, gen_port: int, args: argparse.Namespace) -> tuple:
    """The classifier's open loop while generation streams run (in a process of their own, so that they do
    not slow this client): (classifier summary, generation summary)."""
    total = args.duration + 6.0
    with mp.get_context("spawn").Pool(1) as pool:
        pending = pool.apply_async(generation_load, (str(lm), gen_port, args.streams, total - 3))
        with_gen = run_open_loop(port, "/predict", bodies, rate, args.duration, warmup=4.0).summary()
        box = pending.get(timeout=total + 120)
    return with_gen, {k: box.get(k) for k in ("tokens_per_s", "ttft_p99_ms", "errors")}


def split_cpus() -> tuple[str, str]:
    """The isolation layout: the classifier on the first half of this machine's CPUs, generation on the rest."""
    cpus = sorted(os.sched_getaffinity(0))
    half = max(1, len(cpus) // 2)
    return ",".join(map(str, cpus[:half])), ",".join(map(str, cpus[half:] or cpus))


def measure(args: argparse.Namespace) -> dict:
    work = Path(args.work)
    art, lm = Path(args.artifact).resolve(), Path(args.lm_artifact).resolve()
    meta = json.loads((art / "metadata.json").read_text())
    bodies = json_bodies(workload.sequences("jv", meta=meta))
    common = {"SEQSERVE_DEVICE": "cpu", "SEQSERVE_DATA_DIR": str(work / "data")}
    mine, theirs = split_cpus()
    everything = os.sched_getaffinity(0)

    def start(kind: str, cpus: str) -> tuple:
        model, home, target = (lm, "h2", "service.generate_service:SeqGenerate") if kind == "g" else (art, "h1", None)
        env = {**common, "SEQSERVE_MODEL": str(model), "BENTOML_HOME": str(work / home), "SEQSERVE_CPUS": cpus}
        extra = {"target": target} if target else {}
        proc, url = start_bentoml(ROOT, env, work / f"{kind}-{cpus or 'all'}.log", **extra)
        return proc, int(url.rsplit(":", 1)[1])

    procs: list = []
    try:
        cls, port = start("c", "")
        gen, gen_port = start("g", "")
        procs += [cls, gen]
        cap = run_load(port, "/predict", bodies, 64, args.probe, warmup=1.0).summary()["seq_per_s"]
        rate = round(args.fraction * cap, 1)
        alone = run_open_loop(port, "/predict", bodies, rate, args.duration, warmup=2.0).summary()
        with mp.get_context("spawn").Pool(1) as pool:
            gen_alone = pool.apply(generation_load, (str(lm), gen_port, args.streams, args.duration))
        with_gen, generation = mixed_run(port, bodies, rate, lm, gen_port, args)
        for p in procs:
            stop_process(p)
        procs = []
        # The isolation setting: SEQSERVE_CPUS splits the cores; this client (the classifier's load) keeps to the
        # classifier's cores too, as a client on another machine would not take generation's.
        cls, port = start("c", mine)
        gen, gen_port = start("g", theirs)
        procs += [cls, gen]
        os.sched_setaffinity(0, {int(c) for c in mine.split(",")})
        iso_alone = run_open_loop(port, "/predict", bodies, rate, args.duration, warmup=2.0).summary()
        iso_with_gen, iso_generation = mixed_run(port, bodies, rate, lm, gen_port, args)
    finally:
        os.sched_setaffinity(0, everything)
        for p in procs:
            stop_process(p)
    lone = gen_alone.get("tokens_per_s") or 0.0

    def share(g: dict) -> float | None:
        return round(g["tokens_per_s"] / lone, 3) if lone and g.get("tokens_per_s") is not None else None

    def factor(w: dict) -> float | None:
        return round(w["p99_ms"] / alone["p99_ms"], 2) if alone["p99_ms"] else None

    return {
        "machine": machine(),
        "classifier_saturation_seq_per_s": cap,
        "offered_seq_per_s": rate,
        "fraction": args.fraction,
        "generation_streams": args.streams,
        "alone": alone,
        "with_generation": with_gen,
        "generation": generation,
        "generation_alone": {k: gen_alone.get(k) for k in ("tokens_per_s", "ttft_p99_ms", "errors")},
        "generation_fraction_of_alone": share(generation),
        "p99_factor": factor(with_gen),
        "isolated": {
            "setting": f"SEQSERVE_CPUS={mine} on the classifier, SEQSERVE_CPUS={theirs} on generation",
            "alone": iso_alone,
            "with_generation": iso_with_gen,
            "p99_factor_vs_alone_isolated": round(iso_with_gen["p99_ms"] / iso_alone["p99_ms"], 2)
            if iso_alone["p99_ms"]
            else None,
            "generation": iso_generation,
            "p99_factor": factor(iso_with_gen),
            "generation_fraction_of_alone": share(iso_generation),
        },
    }


def render(r: dict) -> str:
    a, w, iso = r["alone"], r["with_generation"], r["isolated"]
    iw, ia = iso["with_generation"], iso["alone"]
    g, ga, ig = r["generation"], r["generation_alone"], iso["generation"]
    return "\n".join(
        [
            BEGIN,
            f"- machine: {r['machine'].get('cpu')}, {r['machine'].get('cores')} cores; {r['machine'].get('date')}",
            f"- classifier: open loop at {r['offered_seq_per_s']} seq/s ({r['fraction']:.0%} of its saturation, "
            f"{r['classifier_saturation_seq_per_s']} seq/s); generation: {r['generation_streams']} closed-loop "
            f"streams; isolation: {iso['setting']}",
            "",
            "| run | classifier seq/s | p50 ms | p99 ms | errors | p99 factor | generation tokens/s | share of alone |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
            f"| classifier alone | {a['seq_per_s']} | {a['p50_ms']} | {a['p99_ms']} | {a['errors']} | 1 | - | - |",
            f"| generation alone | - | - | - | {ga['errors']} | - | {ga['tokens_per_s']} | 1 |",
            f"| both, no isolation | {w['seq_per_s']} | {w['p50_ms']} | {w['p99_ms']} | {w['errors']} | "
            f"{r['p99_factor']} | {g['tokens_per_s']} | {r['generation_fraction_of_alone']} |",
            f"| classifier alone, isolated layout | {ia['seq_per_s']} | {ia['p50_ms']} | {ia['p99_ms']} | "
            f"{ia['errors']} | {round(ia['p99_ms'] / a['p99_ms'], 2) if a['p99_ms'] else None} | - | - |",
            f"| both, isolated | {iw['seq_per_s']} | {iw['p50_ms']} | {iw['p99_ms']} | {iw['errors']} | "
            f"{iso['p99_factor']} | {ig['tokens_per_s']} | {iso['generation_fraction_of_alone']} |",
            "",
            f"p99 factor (vs the classifier alone on every core): **{r['p99_factor']}x** without isolation, "
            f"**{iso['p99_factor']}x** isolated ({iso['p99_factor_vs_alone_isolated']}x its p99 alone in the "
            f"isolated layout); generation keeps {iso['generation_fraction_of_alone']} of its lone throughput",
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
    p.add_argument("--doc", default=str(DOC), help="the page whose mixed section is rewritten ('' for none)")
    args = p.parse_args(argv)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    r = measure(args)
    Path(args.out).write_text(json.dumps(r, indent=2) + "\n")
    if args.doc:
        write_section(Path(args.doc), BEGIN, END, render(r))
    print(render(r))
    print(json.dumps({k: r[k] for k in ("p99_factor", "alone", "with_generation", "isolated")}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
