"""``make bench-generate``: three ways to serve generation, the same model, workers and ORT options, over HTTP.

* ``per-request``: each request runs its own decoding loop of batch-1 steps in its own thread (what a user of a
  general server writes; ``SEQSERVE_GENERATE_MODE=per-request``);
* ``request-batching``: the whole generation of a batch of requests at once; a batch forms when the previous
  one is done and its answers leave at its end (what BentoML's or Ray Serve's request batching gives);
* ``step-batching``: seqserve's step scheduler (``service/core/decoding/scheduler.py``).

Closed-loop streaming clients (server-sent events) at each concurrency, short prompts from the validation
text, ``max_new_tokens`` log-uniform in 16..512 (a long tail: requests finish at different steps). Measured:
tokens/s (tokens that arrived in the window), time to first token p50/p99 (request sent -> first text), time
between tokens p99 (gaps between text events of a stream). Plus the in-process step limit: the step graph alone
at the same batch size, no HTTP. Writes ``bench/results-generate.json``; ``docs/benchmarks.md`` shows it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from loadtest.procs import machine, start_bentoml, stop_process

ROOT = Path(__file__).resolve().parents[1]
CAPACITY = (1024, 4096)  # step cost at thousands of streams (the default slot count is 4,096)
SYSTEMS = {"per-request": "per-request", "request-batching": "request-batching", "step-batching": "step"}


def workload(art: Path, n: int, seed: int = 0) -> list[dict]:
    meta = json.loads((art / "metadata.json").read_text())
    text_path = ROOT / meta["training_data"]["text"] if meta["training_data"].get("text") else None
    vocab = set(meta["generation"]["vocab"])
    text = text_path.read_text(encoding="utf-8") if text_path and text_path.exists() else "".join(sorted(vocab))
    text = "".join(c for c in text[int(len(text) * 0.9) :] if c in vocab) or "a"
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        start = int(rng.integers(0, max(1, len(text) - 40)))
        prompt = text[start : start + int(rng.integers(8, 33))]
        new = int(16 * 32 ** rng.random())  # log-uniform 16..512
        out.append({"prompt": prompt, "max_new_tokens": new, "seed": i, "temperature": 0.8, "stream": True})
    return out


async def one(host: str, port: int, body: dict, record: dict) -> None:
    """One streaming request on a fresh connection; records arrival times of its text events."""
    reader, writer = await asyncio.open_connection(host, port)
    payload = json.dumps(body).encode()
    writer.write(
        b"POST /generate HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nconnection: close\r\n"
        + f"content-length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    t0 = time.perf_counter()
    arrivals: list[tuple[float, int]] = []  # (time, tokens so far)
    status = int((await reader.readline()).split()[1])
    buffer = b""
    try:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            buffer += chunk
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                data = event[event.find(b"data: ") + 6 :] if b"data: " in event else b""
                if not data.startswith(b"{"):
                    continue
                obj = json.loads(data)
                if b"event: done" in event:
                    record["tokens_total"] = obj["tokens"]
                elif b"event: error" in event:
                    status = 599
                else:
                    arrivals.append((time.perf_counter(), obj["tokens"]))
    finally:
        writer.close()
    record.update(status=status, t0=t0, arrivals=arrivals)


async def closed_loop(port: int, bodies: list[dict], concurrency: int, duration: float, warmup: float) -> dict:
    start = time.perf_counter()
    t_begin, t_end = start + warmup, start + warmup + duration
    records: list[dict] = []
    counter = iter(range(10**9))

    async def worker() -> None:
        while time.perf_counter() < t_end:
            rec: dict = {}
            try:
                await asyncio.wait_for(one("127.0.0.1", port, bodies[next(counter) % len(bodies)], rec), 600)
            except (TimeoutError, OSError, ValueError, IndexError) as e:
                rec.update(status=598, error=str(e), t0=time.perf_counter(), arrivals=[])
            records.append(rec)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    tokens, ttft, gaps, errors = 0, [], [], 0
    for r in records:
        if r["status"] != 200:
            errors += 1
            continue
        prev_t, prev_n = r["t0"], 0
        for k, (t, n) in enumerate(r["arrivals"]):
            if t_begin <= t <= t_end:
                tokens += n - prev_n
                (ttft if k == 0 else gaps).append((t - prev_t) * 1000)
            prev_t, prev_n = t, n
    pct = lambda xs, q: round(float(np.percentile(xs, q)), 1) if xs else None  # noqa: E731
    return {
        "concurrency": concurrency,
        "tokens_per_s": round(tokens / duration, 1),
        "ttft_p50_ms": pct(ttft, 50),
        "ttft_p99_ms": pct(ttft, 99),
        "itl_p99_ms": pct(gaps, 99),
        "errors": errors,
        "requests": len(records),
    }


def step_limit(art: Path, batch: int, threads: int, steps: int = 200, device: str = "cpu") -> dict:
    """The step graph alone at ``batch`` streams (greedy argmax included), no scheduler, no HTTP."""
    from service.core.artifact import find_artifact
    from service.core.runtime import open_checked_session
    from service.tasks.generate.engine import StepModel
    from service.tasks.generate.spec import check_reference

    artifact = find_artifact(str(art))
    gen = artifact.meta.generation
    model = StepModel(open_checked_session(artifact, device, threads, check=check_reference).session, gen)
    states = [np.zeros((gen.layers, batch, gen.hidden), np.float32) for _ in gen.state_names]
    tokens = np.ones((batch, 1), np.int64)
    ones = np.ones(batch, np.int64)
    for _ in range(10):
        logp, states = model.run(tokens, ones, states)
    t0 = time.perf_counter()
    for _ in range(steps):
        logp, states = model.run(tokens, ones, states)
        tokens = logp.argmax(axis=1)[:, None]
    seconds = (time.perf_counter() - t0) / steps
    return {"batch": batch, "step_ms": round(seconds * 1000, 3), "tokens_per_s": round(batch / seconds, 1)}


def scheduler_limit(
    art: Path, bodies: list[dict], concurrency: int, threads: int, duration: float = 12.0, device: str = "cpu"
) -> dict:
    """The step scheduler in process (closed loop of ``concurrency`` generations, the same requests), no HTTP:
    what the scheduler's Python and ONNX Runtime allow before any serving overhead."""
    import threading

    from service.core.artifact import find_artifact
    from service.core.decoding.scheduler import Scheduler
    from service.core.runtime import open_checked_session
    from service.core.vocab import Vocabulary
    from service.tasks.generate.engine import StepModel
    from service.tasks.generate.params import Limits, parse
    from service.tasks.generate.spec import check_reference

    artifact = find_artifact(str(art))
    gen = artifact.meta.generation
    vocab, limits = Vocabulary(gen), Limits(gen.max_prompt_tokens, gen.max_new_tokens, 16)
    session = open_checked_session(artifact, device, threads, spin=False, check=check_reference).session
    sched = Scheduler(StepModel(session, gen), "bench", 4096, 32, 32).start()
    counter, tokens, stop = iter(range(10**9)), [0], time.perf_counter() + duration
    lock = threading.Lock()

    def submit() -> None:
        body = {k: v for k, v in bodies[next(counter) % len(bodies)].items() if k != "stream"}

        def emit(event: dict) -> None:
            if event.get("event") == "done":
                with lock:
                    tokens[0] += event["tokens"]
                if time.perf_counter() < stop:
                    submit()

        sched.submit(parse(body, vocab, limits)[0], emit)

    t0 = time.perf_counter()
    for _ in range(concurrency):
        submit()
    while sched.load and time.perf_counter() < stop + 60:
        time.sleep(0.05)
    seconds = time.perf_counter() - t0
    sched.drain()
    return {"concurrency": concurrency, "tokens_per_s": round(tokens[0] / seconds, 1), "steps": sched.steps}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_generate", description=__doc__)
    p.add_argument("--artifact", default="artifacts/shakespeare")
    p.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 16, 64, 256])
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--out", default="bench/results-generate.json")
    p.add_argument("--work", default="/tmp/seqserve-bench-generate")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="for the servers and the limits")
    p.add_argument("--capacity", nargs="+", type=int, default=list(CAPACITY), help="step limit at these streams too")
    args = p.parse_args(argv)
    art = Path(args.artifact).resolve()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    bodies = workload(art, 4096)
    threads = 2
    limits = [
        step_limit(art, b, threads, steps=50 if b > 256 else 200)
        for b in sorted({1, *args.concurrency, *args.capacity})
    ]
    print("limit:", json.dumps(limits), file=sys.stderr)
    in_process = scheduler_limit(art, bodies, 64, threads, min(12.0, args.duration * 2), args.device)
    print("scheduler in process:", json.dumps(in_process), file=sys.stderr)
    runs = []
    for system in args.systems:
        env = {
            "SEQSERVE_MODEL": str(art),
            "SEQSERVE_GENERATE_MODE": SYSTEMS[system],
            "SEQSERVE_DATA_DIR": str(work / "data"),
            "BENTOML_HOME": str(work / "home"),
            "SEQSERVE_ORT_THREADS": str(threads),
            "SEQSERVE_DEVICE": args.device,
        }
        proc, url = start_bentoml(ROOT, env, work / f"{system}.log", target="service.generate_service:SeqGenerate")
        port = int(url.rsplit(":", 1)[1])
        try:
            for c in args.concurrency:
                r = asyncio.run(closed_loop(port, bodies, c, args.duration, args.warmup))
                r = {"system": system, **r}
                print("bench-generate:", json.dumps(r), file=sys.stderr)
                runs.append(r)
        finally:
            stop_process(proc)
    meta = json.loads((art / "metadata.json").read_text())
    gen = meta["generation"]
    state_bytes = gen["layers"] * gen["hidden"] * 4 * (2 if gen["rnn"] == "lstm" else 1)
    results = {
        "machine": machine(),
        "model": {
            **meta["rnn"],
            "vocab_size": len(meta["generation"]["vocab"]),
            "model_version": meta["model_version"],
        },
        "settings": {
            "api_workers": int(os.environ.get("SEQSERVE_WORKERS", 2)),
            "ort_threads": threads,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "max_new_tokens": "log-uniform 16..512",
            "prompts": "8..32 characters of the validation text",
            "temperature": 0.8,
            "device": args.device,
        },
        "step_limit": limits,
        "scheduler_in_process": in_process,
        "state_bytes_per_stream": state_bytes,
        "runs": runs,
    }
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"bench-generate: wrote {out}", file=sys.stderr)
    return results


def _run(runs: list[dict], system: str, c: int) -> dict | None:
    return next((r for r in runs if r["system"] == system and r["concurrency"] == c), None)


def generate_section(res: dict) -> list[str]:
    """The text-generation section of docs/benchmarks.md."""
    m, model = res["machine"], res["model"]
    out = [
        "## Text generation (`make bench-generate`)",
        "",
        f"- machine: {m['cpu']}, {m['cores']} cores; ONNX Runtime {m['onnxruntime']} (CPU); {m['date']}",
        f"- model: {model['layers']}-layer {model['rnn'].upper()}, hidden {model['hidden']}, vocabulary "
        f"{model['vocab_size']} (`{model['model_version']}`); {res['settings']['api_workers']} API workers, one model "
        f"worker x {res['settings']['ort_threads']} ORT threads for every system",
        f"- closed-loop streaming clients; prompts {res['settings']['prompts']}; max_new_tokens "
        f"{res['settings']['max_new_tokens']}; {res['settings']['warmup_s']:.0f} s warm-up + "
        f"{res['settings']['duration_s']:.0f} s per row; raw numbers in `bench/results-generate.json`",
        "",
        "| system | concurrency | tokens/s | TTFT p50 ms | TTFT p99 ms | ITL p99 ms | errors | requests |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["runs"]:
        out.append(
            f"| {r['system']} | {r['concurrency']} | {r['tokens_per_s']:.0f} | {r['ttft_p50_ms']} | "
            f"{r['ttft_p99_ms']} | {'-' if r['itl_p99_ms'] is None else r['itl_p99_ms']} | {r['errors']} | "
            f"{r['requests']} |"
        )
    kb = res.get("state_bytes_per_stream", 0) / 1024
    out += [
        "",
        f"In-process step limit (the step graph alone, greedy, no HTTP); a stream's state is {kb:.0f} KB whatever "
        "its length, so 4,096 slots hold "
        f"{kb * 4096 / 1024:.0f} MB:",
        "",
    ]
    out += ["| streams | step ms | tokens/s |", "|---:|---:|---:|"]
    out += [f"| {s['batch']} | {s['step_ms']} | {s['tokens_per_s']:.0f} |" for s in res["step_limit"]]
    sip = res.get("scheduler_in_process")
    if sip:
        out += [
            "",
            f"The step scheduler in process (no HTTP), {sip['concurrency']} streams in a closed loop of the same "
            f"requests: {sip['tokens_per_s']:.0f} tokens/s.",
        ]
    a, b, c = (_run(res["runs"], s, 64) for s in ("per-request", "request-batching", "step-batching"))
    lim = next((s for s in res["step_limit"] if s["batch"] == 64), None)
    out += ["", "Targets (2 cores, c=64):", ""]

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**MISSED**"

    if a and c:
        x = c["tokens_per_s"] / max(a["tokens_per_s"], 1e-9)
        out.append(f"- step-batching >= 10x per-request tokens/s: {x:.1f}x: {verdict(x >= 10)}")
    if b and c:
        x = c["tokens_per_s"] / max(b["tokens_per_s"], 1e-9)
        out.append(f"- step-batching >= 2x request-batching tokens/s: {x:.1f}x: {verdict(x >= 2)}")
        if b["ttft_p99_ms"] and c["ttft_p99_ms"]:
            x = b["ttft_p99_ms"] / c["ttft_p99_ms"]
            out.append(f"- TTFT p99 >= 5x lower than request-batching: {x:.1f}x lower: {verdict(x >= 5)}")
    if c and lim:
        x = c["tokens_per_s"] / lim["tokens_per_s"]
        out.append(
            f"- over HTTP >= 50% of the in-process step limit at 64 streams ({lim['tokens_per_s']:.0f} tokens/s): "
            f"{x:.0%}: {verdict(x >= 0.5)}"
        )
    return out + [""]


if __name__ == "__main__":
    main()
