"""``make bench-textclf`` (also run by ``make bench``): texts per second of the text classifier, in process and over
HTTP.

* **In-process limit**: ``TextClfEngine.infer`` (the model service's code: plan, pad, run) over the held-out
  sentences of the artifact's own corpus, in batches of 1, 64 and 256, as fast as it goes on this machine's threads.
* **HTTP**: a real ``bentoml serve service.textclf_service:SeqTextClf`` on 127.0.0.1, closed-loop clients
  (``loadtest.client``) at concurrency 1, 16 and 64, each request one real sentence (what batching across requests
  is for), ``/classify-text`` with the attention weights.

Writes ``bench/results-textclf.json`` and the ``serving`` part of ``docs/textclf.json`` (``docs/textclf.md`` is
rendered again); bounded in time, loopback only.
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
from service.tasks.textclf.engine import TextClfEngine, as_row, tokens
from training.tasks.textclf.data import load_corpus

ROOT = Path(__file__).resolve().parents[1]


def in_process(engine: TextClfEngine, texts: list[str], duration: float) -> dict:
    rows = [as_row(tokens(engine.tokenizer, t)) for t in texts]
    out = {}
    for batch in (1, 64, 256):
        chunks = [rows[i : i + batch] for i in range(0, len(rows) - batch + 1, batch)] or [rows[:batch]]
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < duration:
            for c in chunks:
                engine.infer(c)
                n += len(c)
                if time.perf_counter() - t0 >= duration:
                    break
        out[f"batch_{batch}"] = round(n / (time.perf_counter() - t0), 1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_textclf", description=__doc__)
    p.add_argument("--artifact", default="artifacts/textclf")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    p.add_argument("--concurrency", default="1,16,64")
    p.add_argument("--out", default="bench/results-textclf.json")
    p.add_argument("--doc", default="docs/textclf", help="docs/textclf.json + .md to update ('' : none)")
    args = p.parse_args(argv)
    art_dir = ROOT / args.artifact
    art = find_artifact(str(art_dir))
    data = art.meta.extra["training_data"]
    texts = load_corpus(data["data"], data.get("test")).test.texts
    engine = TextClfEngine(art, Settings())
    result: dict = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count()}
    result.update({"data": data["data"], "texts": len(texts), "model_version": art.meta.model_version})
    result["in_process_texts_per_s"] = in_process(engine, texts, args.duration / 2)
    del engine
    print(f"in-process texts/s: {result['in_process_texts_per_s']}", file=sys.stderr, flush=True)
    bodies = [(json.dumps({"texts": [t]}).encode(), 1) for t in texts]
    log = ROOT / "bench/textclf-serve.log"
    log.parent.mkdir(exist_ok=True)
    env = {"SEQSERVE_MODEL": str(art_dir), "BENTOML_HOME": os.environ.get("BENTOML_HOME", str(ROOT / ".bentoml"))}
    proc, url = start_bentoml(ROOT, env, log, target="service.textclf_service:SeqTextClf")
    port = int(url.rsplit(":", 1)[1])
    try:
        result["http"] = {}
        for c in (int(v) for v in args.concurrency.split(",")):
            r = run_load(port, "/classify-text", bodies, c, args.duration)
            lat = np.array(r.latencies_ms) if r.latencies_ms else np.array([np.nan])
            result["http"][f"c{c}"] = {
                "texts_per_s": round(r.sequences / r.seconds, 1),
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
    if args.doc:
        from loadtest.eval_textclf import write_docs

        doc = ROOT / args.doc
        measured = json.loads(doc.with_suffix(".json").read_text()) if doc.with_suffix(".json").exists() else {}
        measured["serving"] = result
        doc.with_suffix(".json").write_text(json.dumps(measured, indent=1))
        if "corpora" in measured:
            write_docs(measured, doc.with_suffix(".md"))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
