"""``make profile-tail``: where the tail comes from, stage by stage, at the bench's offered loads (issue 26).

Starts seqserve as ``make bench`` does (same artifact export, workers and threads), sends each profile's
requests in an open loop at each offered rate (by default the rates of the last ``make bench``'s open-loop pass,
``bench/results.json``), and reads ``seqserve_stage_seconds{stage}`` (``service.core.stages``) from ``/metrics``
before and after each run: each stage's p50 and p99 over that run's requests, interpolated within histogram
buckets as Prometheus's ``histogram_quantile`` does, beside the client's own p50/p99. Writes
``bench/results-tail.json`` and prints a table.

    python -m loadtest.profile_tail [--rates 200,320] [--profiles jv,longtail] [--duration 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

from loadtest import workload
from loadtest.bench import ROOT, prepare_artifact, start_seqserve
from loadtest.client import run_load, run_open_loop
from loadtest.procs import machine

STAGE_ORDER = ("parse", "queue", "to_batch", "compute", "from_batch", "respond", "total")


def stage_buckets(url: str, family: str = "seqserve_stage_seconds", label: str = "stage") -> dict:
    """Cumulative bucket counts of a histogram ``family`` per value of ``label`` (summed over the server's
    processes): the stages, or with ``seqserve_gc_pause_seconds`` / ``generation`` the collections."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    out: dict[str, dict[float, float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == f"{family}_bucket":
                le = float(s.labels["le"])
                per = out.setdefault(s.labels[label], {})
                per[le] = per.get(le, 0.0) + s.value
    return out


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """``histogram_quantile``: linear within the bucket holding the q-th observation (the last finite bound
    if it falls in +Inf); None without observations."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return None
    rank, below, lower = q * total, 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if le == float("inf"):
                return lower
            inside = count - below
            return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
        below, lower = count, le
    return lower


def delta(after: dict, before: dict) -> dict[str, dict[float, float]]:
    return {st: {le: n - before.get(st, {}).get(le, 0.0) for le, n in b.items()} for st, b in after.items()}


def rates_from_bench(path: Path) -> dict[str, list[float]]:
    """Each profile's offered rates in the last ``make bench`` open-loop pass."""
    if not path.exists():
        return {}
    out: dict[str, list[float]] = {}
    for r in json.loads(path.read_text()).get("runs", []):
        if r.get("system") == "seqserve" and r.get("mode") == "open":
            out.setdefault(r["profile"], []).append(r["offered_per_s"])
    return {p: sorted(set(v)) for p, v in out.items()}


def profile(url: str, port: int, bodies: list, rate: float, duration: float, warmup: float) -> dict:
    gc_family = ("seqserve_gc_pause_seconds", "generation")
    before, gc_before = stage_buckets(url), stage_buckets(url, *gc_family)
    client = run_open_loop(port, "/predict", bodies, rate, duration, warmup).summary()
    time.sleep(0.3)  # the last responses' observations land
    stages = delta(stage_buckets(url), before)
    pauses = delta(stage_buckets(url, *gc_family), gc_before)
    row: dict = {"offered_per_s": rate, "client": client, "stages": {}}
    for st in STAGE_ORDER:
        b = stages.get(st, {})
        p50, p99 = quantile(0.5, b), quantile(0.99, b)
        row["stages"][st] = {
            "requests": int(b.get(float("inf"), 0.0)),
            "p50_ms": None if p50 is None else round(p50 * 1000, 2),
            "p99_ms": None if p99 is None else round(p99 * 1000, 2),
        }
    row["gc_pauses"] = {}
    for gen, b in sorted(pauses.items()):
        p99 = quantile(0.99, b)
        longest = min((le for le, n in b.items() if n >= b.get(float("inf"), 0.0)), default=None)
        row["gc_pauses"][gen] = {
            "count": int(b.get(float("inf"), 0.0)),
            "p99_ms": None if p99 is None else round(p99 * 1000, 2),
            "longest_under_ms": None if longest in (None, float("inf")) else round(longest * 1000, 2),
        }
    return row


def table(rows: list[dict]) -> str:
    head = "profile    req/s  client p50/p99 | " + " | ".join(f"{s:>13s}" for s in STAGE_ORDER)
    lines = [head, "-" * len(head)]
    for r in rows:
        c = r["client"]
        cells = [f"{r['stages'][s]['p50_ms']!s:>5}/{r['stages'][s]['p99_ms']!s:>6}" for s in STAGE_ORDER]
        lines.append(
            f"{r['profile']:9s} {r['offered_per_s']:6.1f} {c['p50_ms']:>6}/{c['p99_ms']:>7} | " + " | ".join(cells)
        )
    lines.append("garbage collections during each run (all processes): generation: count, p99 ms, longest under ms")
    for r in rows:
        gcs = ", ".join(
            f"gen {g}: {v['count']}, {v['p99_ms']}, {v['longest_under_ms']}" for g, v in r["gc_pauses"].items()
        )
        lines.append(f"{r['profile']:9s} {r['offered_per_s']:6.1f} {gcs or 'none'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m loadtest.profile_tail", description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default="", help="offered requests/s for every profile (default: the last bench's)")
    p.add_argument("--profiles", default="jv,longtail")
    p.add_argument("--duration", type=float, default=8.0, help="measured seconds per rate")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--artifact", default=None, help="an exported artifact (default: runs/default exported as bench)")
    p.add_argument("--workers", type=int, default=2, help="API workers (as make bench)")
    p.add_argument("--model-workers", type=int, default=1)
    p.add_argument("--ort-threads", type=int, default=1)
    p.add_argument("--bench-results", default="bench/results.json")
    p.add_argument("--work", default="bench/work-tail")
    p.add_argument("--out", default="bench/results-tail.json")
    args = p.parse_args(argv)
    work = (ROOT / args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    art = Path(args.artifact) if args.artifact else prepare_artifact(work)
    meta = json.loads((art / "metadata.json").read_text())
    profiles = [s for s in args.profiles.split(",") if s]
    given = [float(r) for r in args.rates.split(",") if r]
    known = rates_from_bench(ROOT / args.bench_results)
    rates = {pr: given or known.get(pr) or [100.0, 200.0] for pr in profiles}
    opts = SimpleNamespace(
        workers=args.workers, model_workers=args.model_workers, ort_threads=args.ort_threads, seqserve_ort_threads=0
    )
    server = start_seqserve(art, work, opts)
    url = f"http://127.0.0.1:{server.port}"
    rows = []
    try:
        for pr in profiles:
            bodies = server.encode(workload.sequences(pr, meta=meta))
            run_load(server.port, "/predict", bodies, 16, 3.0, warmup=0)  # unrecorded warm-up, as the bench
            for rate in rates[pr]:
                rows.append({"profile": pr, **profile(url, server.port, bodies, rate, args.duration, args.warmup)})
                print(f"profile-tail: {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    finally:
        server.stop()
    result = {"machine": machine(), "workers": args.workers, "runs": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows))
    return result


if __name__ == "__main__":
    main()
