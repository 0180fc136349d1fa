"""``make bench-forecast``: series per second of the forecaster, in process and over HTTP.

* **In-process limit**: ``ForecastEngine.infer`` (the model service's code: plan, pad, run) over batches of the
  held-out rows of the artifact's own data, as fast as it goes on this machine's threads.
* **HTTP**: a real ``bentoml serve service.forecast_service:SeqForecast`` on 127.0.0.1, closed-loop clients
  (``loadtest.client``) at concurrency 1, 16 and 64, each request one series of its real history (one series
  per request: what batching across requests is for), ``/forecast`` with quantiles 0.1/0.5/0.9 and the mean.

Writes ``bench/results-forecast.json`` and prints a table; bounded in time, loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from loadtest.client import run_load
from loadtest.procs import start_bentoml, stop_process
from service.core.artifact import find_artifact
from service.core.settings import Settings
from service.tasks.forecast.calendar import Calendar
from service.tasks.forecast.engine import ForecastEngine
from training.tasks.forecast.data import load_panel

ROOT = Path(__file__).resolve().parents[1]


def series_of(art_dir: Path) -> tuple[list[tuple[str, np.ndarray]], dict]:
    art = find_artifact(str(art_dir))
    data = art.meta.extra["training_data"]["data"]
    panel = load_panel(data)
    fc = art.meta.forecasting
    panel.calendar = Calendar(panel.calendar.freq, fc.period)
    return [(s, y) for s, y in zip(panel.starts, panel.values, strict=True)], {"data": data, "series": len(panel)}


def in_process(art_dir: Path, series: list, duration: float) -> dict:
    engine = ForecastEngine(find_artifact(str(art_dir)), Settings())
    rows = [engine.rows_for(y, engine.calendar.step_index(s), None) for s, y in series]
    out = {}
    for batch in (1, 64, 256):
        chunks = [rows[i : i + batch] for i in range(0, len(rows) - batch + 1, batch)] or [rows[:batch]]
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < duration:
            for c in chunks:
                engine.infer(c)
                n += len(c)
        out[f"batch_{batch}"] = round(n / (time.perf_counter() - t0), 1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_forecast", description=__doc__)
    p.add_argument("--artifact", default="artifacts/forecast")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    p.add_argument("--concurrency", default="1,16,64")
    p.add_argument("--out", default="bench/results-forecast.json")
    args = p.parse_args(argv)
    art_dir = ROOT / args.artifact
    series, info = series_of(art_dir)
    result: dict = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(), **info}
    result["in_process_series_per_s"] = in_process(art_dir, series, args.duration / 2)
    print(f"in-process series/s: {result['in_process_series_per_s']}", file=sys.stderr, flush=True)
    bodies = []
    for s, y in series:
        target = [None if not np.isfinite(v) else float(v) for v in y]
        body = {"instances": [{"start": s, "target": target}], "configuration": {"output_types": ["mean", "quantiles"]}}
        bodies.append((json.dumps(body).encode(), 1))
    log = ROOT / "bench/forecast-serve.log"
    log.parent.mkdir(exist_ok=True)
    env = {"SEQSERVE_MODEL": str(art_dir), "BENTOML_HOME": os.environ.get("BENTOML_HOME", str(ROOT / ".bentoml"))}
    proc, url = start_bentoml(ROOT, env, log, target="service.forecast_service:SeqForecast")
    port = int(url.rsplit(":", 1)[1])
    try:
        result["http"] = {}
        for c in (int(v) for v in args.concurrency.split(",")):
            r = run_load(port, "/forecast", bodies, c, args.duration)
            lat = np.array(r.latencies_ms) if r.latencies_ms else np.array([np.nan])
            result["http"][f"c{c}"] = {
                "series_per_s": round(r.sequences / r.seconds, 1),
                "p50_ms": round(float(np.percentile(lat, 50)), 2),
                "p99_ms": round(float(np.percentile(lat, 99)), 2),
                "errors": r.errors,
            }
            print(f"HTTP c={c}: {result['http'][f'c{c}']}", file=sys.stderr, flush=True)
    finally:
        stop_process(proc)
    out = ROOT / args.out
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
