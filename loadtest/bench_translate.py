"""``make bench-translate``: three ways to serve translation, the same model, workers and ORT options, over HTTP.

* ``per-request``: each request runs its own decoding loop (its encoder call, then batch-of-its-beams steps) in its
  own thread: what a user of a general server writes (``SEQSERVE_TRANSLATE_MODE=per-request``);
* ``request-batching``: the requests that arrived while the previous batch ran are decoded together; the batch's
  answers leave at its end (what BentoML's or Ray Serve's request batching gives; ``request-batching``);
* ``step-batching``: seqserve's scheduler (``service/core/decoding/encoder_decoder.py``): encoders of arriving
  sentences batched, every decoding step of every beam of every sentence in one call, each sentence leaving as
  soon as it is done.

Closed-loop clients at each concurrency, one held-out German sentence per request (the run's ``test.tsv``, else the
dictionary's sentences), beam 5 (the default). Measured: sentences/s and target tokens/s in the window, latency
p50/p99. Plus the in-process limit: the scheduler alone with the same sentences, no HTTP. Writes
``bench/results-translate.json``; ``docs/translation.md`` shows it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from loadtest.procs import machine, start_bentoml, stop_process
from service.core.decoding.beam import STOPPING
from service.tasks.translate.params import DEFAULT_STOPPING

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = {"per-request": "per-request", "request-batching": "request-batching", "step-batching": "step"}


def sentences(art: Path, run: Path | None, n: int = 1000) -> list[str]:
    """Held-out source sentences that fit the model's source limit."""
    from service.core.artifact import find_artifact
    from service.tasks.translate.engine import tokenizer

    artifact = find_artifact(str(art))
    tok, limit = tokenizer(artifact), artifact.meta.translation.max_source_tokens
    if run is not None and (run / "test.tsv").exists():
        texts = [line.split("\t")[0] for line in (run / "test.tsv").read_text("utf-8").splitlines()]
    else:
        from training.tasks.translate.data import read_ding

        texts = read_ding()[0].source
    return [t for t in texts if len(tok.encode(t)) < limit][:n]


async def closed_loop(
    url: str,
    texts: list[str],
    beam: int,
    concurrency: int,
    duration: float,
    warmup: float,
    stopping: str = DEFAULT_STOPPING,
) -> dict:
    start = time.perf_counter()
    t_begin, t_end = start + warmup, start + warmup + duration
    done: list[tuple[float, float, int, int]] = []  # (sent, answered, target tokens, status)
    counter = iter(range(10**9))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def worker() -> None:
            while time.perf_counter() < t_end:
                body = {"texts": [texts[next(counter) % len(texts)]], "beam_size": beam, "return_scores": False}
                if beam > 1:
                    body["early_stopping"] = stopping
                t0 = time.perf_counter()
                try:
                    r = await client.post(f"{url}/translate", json=body)
                    tokens = sum(t["tokens"] for t in r.json()["translations"]) if r.status_code == 200 else 0
                    done.append((t0, time.perf_counter(), tokens, r.status_code))
                except (httpx.HTTPError, ValueError, KeyError):
                    done.append((t0, time.perf_counter(), 0, 599))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    window = [d for d in done if t_begin <= d[1] <= t_end]
    ok = [d for d in window if d[3] == 200]
    lat = [(d[1] - d[0]) * 1000 for d in ok]
    pct = lambda q: round(float(np.percentile(lat, q)), 1) if lat else None  # noqa: E731
    return {
        "concurrency": concurrency,
        "sentences_per_s": round(len(ok) / duration, 1),
        "target_tokens_per_s": round(sum(d[2] for d in ok) / duration, 1),
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "errors": sum(d[3] != 200 for d in window),
        "requests": len(window),
    }


def in_process(
    art: Path, texts: list[str], beam: int, concurrency: int, duration: float = 15.0, stopping: str = DEFAULT_STOPPING
) -> dict:
    """The scheduler alone (closed loop of ``concurrency`` sentences), no HTTP: what the scheduler's Python and
    ONNX Runtime allow before any serving overhead."""
    from service.core.artifact import find_artifact
    from service.core.settings import Settings
    from service.tasks.translate.engine import TranslateEngine
    from service.tasks.translate.params import Limits, parse
    from service.tasks.translate.settings import TranslateSettings

    engine = TranslateEngine(find_artifact(str(art)), Settings(), TranslateSettings())
    tr = engine.artifact.meta.translation
    limits = Limits(64, tr.max_source_tokens, tr.max_target_tokens, 16, 4096)
    counter, totals, stop = iter(range(10**9)), [0, 0, 0], time.perf_counter() + duration  # done, tokens, in flight
    lock = threading.Lock()

    def submit() -> None:
        body = {"texts": [texts[next(counter) % len(texts)]], "beam_size": beam}
        if beam > 1:
            body["early_stopping"] = stopping

        def emit(event: dict) -> None:
            if event.get("event") not in ("done", "error"):
                return
            if time.perf_counter() < stop:
                submit()  # first: the count in flight never passes through 0 before the stop
            with lock:
                totals[0] += event.get("event") == "done"
                totals[1] += event.get("tokens", 0)
                totals[2] -= 1

        with lock:
            totals[2] += 1
        engine.scheduler.submit(parse(body, engine.tokenizer, limits)[0][0], emit)

    t0 = time.perf_counter()
    for _ in range(concurrency):
        submit()
    while totals[2] and time.perf_counter() < stop + 120:  # every sentence in flight at the stop finishes
        time.sleep(0.05)
    seconds = time.perf_counter() - t0
    engine.scheduler.drain()
    return {
        "concurrency": concurrency,
        "sentences_per_s": round(totals[0] / seconds, 1),
        "target_tokens_per_s": round(totals[1] / seconds, 1),
        "decode_steps": engine.scheduler.steps,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_translate", description=__doc__)
    p.add_argument("--artifact", default="artifacts/translate")
    p.add_argument("--run", default="runs/translate", help="the run whose test.tsv gives the sentences")
    p.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 16, 64])
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--early-stopping", default=DEFAULT_STOPPING, choices=list(STOPPING))
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=4.0)
    p.add_argument("--in-process-seconds", type=float, default=15.0)
    p.add_argument("--out", default="bench/results-translate.json")
    args = p.parse_args(argv)
    art = Path(args.artifact)
    texts = sentences(art, Path(args.run))
    results: dict = {"machine": machine(), "artifact": str(art), "beam": args.beam, "sentences": len(texts)}
    results["early_stopping"] = args.early_stopping
    results["model_version"] = json.loads((art / "metadata.json").read_text())["model_version"]
    results["http"] = {}
    for name in args.systems:
        env = {"SEQSERVE_MODEL": str(art), "SEQSERVE_TRANSLATE_MODE": SYSTEMS[name]}
        log = Path(args.out).parent / f"translate-{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        proc, url = start_bentoml(ROOT, env, log, target="service.translate_service:SeqTranslate")
        try:
            runs = []
            for c in args.concurrency:
                r = asyncio.run(closed_loop(url, texts, args.beam, c, args.duration, args.warmup, args.early_stopping))
                print(f"{name:17s} c={c:3d}: {r}", file=sys.stderr)
                runs.append(r)
            results["http"][name] = runs
        finally:
            stop_process(proc)
    limit_c = (1, max(args.concurrency))
    stop = args.early_stopping
    results["in_process"] = [in_process(art, texts, args.beam, c, args.in_process_seconds, stop) for c in limit_c]
    print(f"in process: {results['in_process']}", file=sys.stderr)
    http = results["http"]
    if "step-batching" in http and "per-request" in http:
        step, per = http["step-batching"][-1], http["per-request"][-1]
        results["step_vs_per_request_at_max_c"] = round(step["sentences_per_s"] / max(per["sentences_per_s"], 1e-9), 2)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "machine"}, indent=1))
    return results


if __name__ == "__main__":
    main()
