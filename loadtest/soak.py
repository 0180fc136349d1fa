"""``make soak``: the classifier at ~70% of its measured saturation for 10 minutes; p99 over time and RSS growth.

1. starts ``bentoml serve`` (the artifact, 127.0.0.1, its own store and data directory);
2. measures saturation: a closed loop of ``--concurrency`` connections for ``--probe`` seconds (sequences/s);
3. drives an open loop (requests due at a fixed rate, latency from the due time: no coordinated omission) at
   ``--fraction`` of it, in back-to-back windows of ``--window`` seconds, recording each window's p50/p99 and
   errors and the resident memory of the whole server (every process of it) after each window;
4. reports p99 first vs last window and the RSS growth after warm-up (the first ``--warmup`` seconds), the goals
   being a flat p99 and RSS < +5%, into ``bench/results-soak.json`` and the soak section of
   ``docs/reliability.md``.

``--check`` (CI: ``tests/test_loadtest.py``, 60 s) writes nothing and fails only on errors: timings are for the
benchmark, never for tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from loadtest import workload
from loadtest.client import run_load, run_open_loop
from loadtest.peer_servers import json_bodies
from loadtest.plots import soak_windows
from loadtest.procs import descendants, machine, start_bentoml, stop_process

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- soak:begin (written by make soak) -->", "<!-- soak:end -->"


def tree_rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants (MiB)."""
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def soak(args: argparse.Namespace) -> dict:
    art = Path(args.artifact).resolve()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    meta = json.loads((art / "metadata.json").read_text())
    bodies = json_bodies(workload.sequences("jv", meta=meta))
    env = {
        "SEQSERVE_MODEL": str(art),
        "SEQSERVE_DEVICE": "cpu",
        "BENTOML_HOME": str(work / "home"),
        "SEQSERVE_DATA_DIR": str(work / "data"),
    }
    proc, url = start_bentoml(ROOT, env, work / "soak.log")
    port = int(url.rsplit(":", 1)[1])
    try:
        probe = run_load(port, "/predict", bodies, args.concurrency, args.probe, warmup=1.0).summary()
        rate = round(args.fraction * probe["seq_per_s"], 1)
        print(f"soak: saturation {probe['seq_per_s']} seq/s; offering {rate}/s", file=sys.stderr, flush=True)
        windows, t0 = [], time.perf_counter()
        while time.perf_counter() - t0 < args.duration - 0.5:
            span = min(args.window, args.duration - (time.perf_counter() - t0))
            r = run_open_loop(port, "/predict", bodies, rate, span, warmup=0.0)
            s = r.summary()
            row = {
                "t_s": round(time.perf_counter() - t0, 1),
                "requests": s["requests"],
                "errors": r.errors,
                "p50_ms": s["p50_ms"],
                "p99_ms": s["p99_ms"],
                "rss_mib": round(tree_rss_mib(proc.pid), 1),
            }
            if r.first_error:
                row["first_error"] = r.first_error
            windows.append(row)
            print(f"soak: {json.dumps(row)}", file=sys.stderr, flush=True)
    finally:
        stop_process(proc)
    after_warmup = [w for w in windows if w["t_s"] > args.warmup] or windows
    base, last = after_warmup[0]["rss_mib"], windows[-1]["rss_mib"]
    p99 = [w["p99_ms"] for w in after_warmup]
    return {
        "machine": machine(),
        "settings": {
            "artifact": str(art.relative_to(ROOT)) if art.is_relative_to(ROOT) else str(art),
            "profile": "jv (one sequence per request)",
            "fraction_of_saturation": args.fraction,
            "duration_s": args.duration,
            "window_s": args.window,
            "warmup_s": args.warmup,
        },
        "saturation_seq_per_s": probe["seq_per_s"],
        "offered_seq_per_s": rate,
        "windows": windows,
        "errors": sum(w["errors"] for w in windows),
        "requests": sum(w["requests"] for w in windows),
        "p99_ms_after_warmup": {"first": p99[0], "last": p99[-1], "median": float(np.median(p99)), "max": max(p99)},
        "rss_mib_after_warmup": {"first": base, "last": last},
        "rss_growth_pct": round(100 * (last - base) / base, 2) if base else None,
    }


def render(result: dict) -> str:
    p99, rss = result["p99_ms_after_warmup"], result["rss_mib_after_warmup"]
    m = result["machine"]
    lines = [
        BEGIN,
        f"- machine: {m.get('cpu')}, {m.get('cores')} cores; {m.get('date')}",
        f"- saturation (closed loop): {result['saturation_seq_per_s']} seq/s; offered "
        f"{result['offered_seq_per_s']} seq/s ({result['settings']['fraction_of_saturation']:.0%}) for "
        f"{result['settings']['duration_s']:.0f} s, open loop, {result['settings']['window_s']:.0f} s windows",
        f"- requests {result['requests']}, errors **{result['errors']}**",
        f"- p99 after warm-up: first window {p99['first']} ms, last {p99['last']} ms, median {p99['median']:.1f}, "
        f"max {p99['max']} (goal: flat)",
        f"- server RSS (all its processes) after warm-up: {rss['first']} -> {rss['last']} MiB, "
        f"**{result['rss_growth_pct']:+.2f}%** (goal: < +5%)",
        "",
        "| t (s) | requests | errors | p50 ms | p99 ms | RSS MiB |",
        "|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {w['t_s']} | {w['requests']} | {w['errors']} | {w['p50_ms']} | {w['p99_ms']} | {w['rss_mib']} |"
            for w in result["windows"]
        ),
        END,
    ]
    return "\n".join(lines)


def write_section(doc: Path, begin: str, end: str, block: str) -> None:
    """Replace what stands between the markers ``begin`` and ``end`` of ``doc`` with ``block`` (which has them)."""
    text = doc.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{doc}: the markers {begin!r} and {end!r} are missing")
    head, rest = text.split(begin, 1)
    doc.write_text(head + block + rest.split(end, 1)[1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.soak", description=__doc__)
    p.add_argument("--artifact", default="artifacts/default")
    p.add_argument("--duration", type=float, default=600.0)
    p.add_argument("--window", type=float, default=30.0)
    p.add_argument("--warmup", type=float, default=120.0, help="RSS and p99 are compared after this")
    p.add_argument("--fraction", type=float, default=0.7)
    p.add_argument("--concurrency", type=int, default=64, help="of the saturation probe")
    p.add_argument("--probe", type=float, default=10.0, help="seconds of the saturation probe")
    p.add_argument("--work", default=f"/tmp/seqserve-soak-{os.getpid()}")
    p.add_argument("--out", default="bench/results-soak.json")
    p.add_argument("--check", action="store_true", help="CI: write nothing, fail only on errors")
    args = p.parse_args(argv)
    result = soak(args)
    if args.check:
        print(json.dumps({k: result[k] for k in ("requests", "errors", "rss_growth_pct")}))
        bad = [w for w in result["windows"] if w["errors"]]
        if bad or not result["requests"]:
            print(f"soak: errors: {bad[:3]}", file=sys.stderr)
            return 1
        return 0
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    write_section(DOC, BEGIN, END, render(result))
    soak_windows(result, DOC.parent / "img" / "soak-p99.png")
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
