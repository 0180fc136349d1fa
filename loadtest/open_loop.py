"""The benchmark's open-loop pass: tail latency of seqserve and Triton at the same offered load.

A closed-loop client slows down with the server, so its p99 hides queueing (coordinated omission) and two
systems' p99 are compared at different throughputs. Here both get the same fixed arrival rate, a fraction of
the lower of their closed-loop capacities, several times; the median of each figure is reported.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from loadtest.client import run_load, run_open_loop

FIGURES = ("seq_per_s", "p50_ms", "p95_ms", "p99_ms")


OPEN_LOOP_SYSTEMS = ("seqserve", "triton")


def open_loop_pass(
    start: Callable[[str], Any], args: argparse.Namespace, mixes: dict, closed: list[dict]
) -> list[dict]:
    """Tails at equal offered load: for each profile, ``args.open_loop`` fractions of the lower closed-loop
    capacity (at the highest concurrency) of seqserve and Triton; each system ``args.open_repeats`` times per
    rate, the median of each figure reported (with the spread of p99)."""
    top = max(args.concurrency)
    runs = []
    for name in OPEN_LOOP_SYSTEMS:
        if name not in args.systems:
            continue
        try:  # a peer that cannot be started is reported, not fatal (as in the closed-loop pass)
            server = start(name)
        except (OSError, RuntimeError, TimeoutError, subprocess.CalledProcessError) as e:
            print(f"bench: open loop: {name} skipped: {type(e).__name__}: {str(e)[-300:]}", file=sys.stderr)
            continue
        try:
            path = server.paths[name]
            warm = server.encode(next(iter(mixes.values())))
            run_load(server.port, path, warm, 16, args.server_warmup, warmup=0)
            for profile, seqs in mixes.items():
                caps = [
                    r["seq_per_s"]
                    for r in closed
                    if r["system"] in OPEN_LOOP_SYSTEMS and r["profile"] == profile and r.get("concurrency") == top
                ]
                if not caps or min(caps) <= 0:  # a system that answered nothing has no capacity to share
                    continue
                bodies = server.encode(seqs)
                for fraction in args.open_loop:
                    rate = round(fraction * min(caps), 1)
                    try:
                        reps = [
                            run_open_loop(server.port, path, bodies, rate, args.open_duration, args.warmup).summary()
                            for _ in range(args.open_repeats)
                        ]
                    except OSError as e:  # the server went away mid-pass: report, keep the rest of the bench
                        print(f"bench: open loop: {name} failed at {rate}/s: {e}", file=sys.stderr)
                        continue
                    med = {
                        k: float(np.median([r[k] for r in reps])) for k in ("seq_per_s", "p50_ms", "p95_ms", "p99_ms")
                    }
                    run = {
                        "system": name,
                        "profile": profile,
                        "mode": "open",
                        "concurrency": None,
                        "offered_per_s": rate,
                        "offered_fraction": fraction,
                        **med,
                        "p99_ms_runs": [r["p99_ms"] for r in reps],
                        "errors": sum(r["errors"] for r in reps),
                    }
                    print(f"bench: {json.dumps(run)}", file=sys.stderr, flush=True)
                    runs.append(run)
        finally:
            server.stop()
    return runs
