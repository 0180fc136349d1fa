"""The GPU section of docs/benchmarks.md, from ``bench/results-gpu.json`` (``make bench-gpu`` on the GPU machine).

``python -m loadtest.gpu_report`` (``make bench-report``) re-renders docs/benchmarks.md from bench/results.json
and bench/results-gpu.json without rerunning anything (e.g. after a GPU visit brought new figures back).
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PENDING = [
    "GPU figures pending: no GPU run has been recorded from this code. On the GPU machine, one command",
    "(`loadtest/gpu_visit.sh`, recipe inside) runs the CPU layout, the GPU layout and the in-process GPU",
    "engine and writes `bench/results-gpu.json`; `make bench-gpu DEVICE=cpu` is the same script on CPU.",
    "",
]


def _run(runs: list[dict], layout: str, profile: str, spr: int, c: int) -> dict | None:
    return next(
        (
            r
            for r in runs
            if r["layout"] == layout
            and r["profile"] == profile
            and r.get("sequences_per_request") == spr
            and r.get("concurrency") == c
        ),
        None,
    )


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**MISSED**"


def gpu_targets(gpu: dict) -> list[str]:
    """Issue 27's GPU targets (and issue 9's in-process one), each with the figures it was judged on."""
    runs, out = gpu["runs"], []
    for profile in ("jv", "longtail"):
        for spr, c, need in ((16, 256, 2.0), (1, 64, 1.2)):
            g, cpu = _run(runs, "gpu", profile, spr, c), _run(runs, "cpu", profile, spr, c)
            if not (g and cpu and cpu["seq_per_s"]):
                continue
            ratio = g["seq_per_s"] / cpu["seq_per_s"]
            out.append(
                f"- `{profile}`, c={c}, {spr} seq/request: GPU layout {g['seq_per_s']:.0f} seq/s (p99 "
                f"{g['p99_ms']:.0f} ms) vs CPU layout {cpu['seq_per_s']:.0f} (p99 {cpu['p99_ms']:.0f}) = "
                f"**{ratio:.2f}x** (target >= {need}x, p99 no worse): "
                f"{_verdict(ratio >= need and g['p99_ms'] <= cpu['p99_ms'])}"
            )
    calls = gpu.get("model_service_metrics", {}).get("gpu", {})
    inproc = [r for r in runs if r.get("mode") == "inprocess"]
    for profile in ("jv", "longtail"):
        http = _run(runs, "gpu", profile, 16, 256)
        engine = max((r for r in inproc if r["profile"] == profile), key=lambda r: r["seq_per_s"], default=None)
        if http and engine:
            share = http["seq_per_s"] / engine["seq_per_s"]
            size = f"; the layout's model calls averaged {calls['mean_call_size']:.0f} sequences" if calls else ""
            out.append(
                f"- `{profile}`, c=256 x 16: GPU layout over HTTP {http['seq_per_s']:.0f} seq/s = **{share:.0%}** of "
                f"the in-process GPU engine's best ({engine['seq_per_s']:.0f} at batch {engine['batch']}{size}) "
                f"(target >= 60%): {_verdict(share >= 0.6)}"
            )
    one = _run(runs, "gpu", "jv", 1, 1)
    if one:
        out.append(
            f"- `jv`, c=1 x 1: GPU layout p50 **{one['p50_ms']:.1f} ms** (target <= 5 ms): "
            f"{_verdict(one['p50_ms'] <= 5)}"
        )
    big = next((r["seq_per_s"] for r in inproc if r["profile"] == "jv" and r["batch"] == 1024), None)
    if big:
        out.append(
            f"- in-process GPU engine, `jv`, batch 1024: **{big:,.0f}** seq/s (target >= 50,000): "
            f"{_verdict(big >= 50_000)}"
        )
    pc = gpu.get("provider_check", {})
    check, shapes = pc.get("check"), pc.get("fixed_shapes")
    if check:
        worst = max(check["max_abs_diff_batched"], check["max_abs_diff_alone"], (shapes or {}).get("worst_parity", 0))
        where = f"; every one of the {shapes['shapes']} fixed shapes, batched and alone" if shapes else ""
        out.append(
            f"- CUDA stays exact: load-time check vs the CPU reference {check['max_abs_diff_batched']:.1e} batched, "
            f"{check['max_abs_diff_alone']:.1e} alone{where}: worst {worst:.1e} (target <= 1e-5): "
            f"{_verdict(worst <= 1e-5)}"
        )
    return out


def gpu_section(gpu: dict | None) -> list[str]:
    """The GPU layouts side by side, the in-process engine, the settings tried, the targets."""
    out = ["## GPU (`make bench-gpu`, `bench/results-gpu.json`)", ""]
    if not gpu or gpu.get("machine", {}).get("device") != "cuda":
        return out + PENDING
    m, s = gpu["machine"], gpu.get("settings", {})
    out += [
        f"- {m.get('gpu')} ({m.get('gpu_memory')}), driver {m.get('driver')}, CUDA {m.get('cuda')}, cuDNN "
        f"{m.get('cudnn')}, ONNX Runtime {m.get('onnxruntime')}, {m.get('cpus')} CPUs; {gpu.get('date', '')}, "
        f"commit {gpu.get('commit', '?')}",
        f"- both layouts: {s.get('api_workers')} API workers; CPU layout {s.get('cpu_model_workers')} model workers x "
        f"{s.get('cpu_ort_threads')} ORT threads; GPU layout {s.get('gpu_model_workers', 1)} model worker(s) sharing "
        f"the GPU ({s.get('gpu_env') or 'defaults'}); closed loop from {s.get('clients')} client processes, "
        f"{s.get('warmup')} s warm-up + {s.get('duration')} s measured per row",
        "",
        "| profile | seqs/request | concurrency | CPU seq/s | CPU p50 / p99 ms | GPU seq/s | GPU p50 / p99 ms "
        "| GPU / CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    runs = gpu["runs"]
    for r in runs:
        if r["layout"] != "gpu":
            continue
        cpu = _run(runs, "cpu", r["profile"], r["sequences_per_request"], r["concurrency"])
        cpu_cols = f"{cpu['seq_per_s']:.0f} | {cpu['p50_ms']:.1f} / {cpu['p99_ms']:.1f}" if cpu else "- | -"
        ratio = f"{r['seq_per_s'] / cpu['seq_per_s']:.2f}x" if cpu and cpu["seq_per_s"] else "-"
        out.append(
            f"| {r['profile']} | {r['sequences_per_request']} | {r['concurrency']} | {cpu_cols} | "
            f"{r['seq_per_s']:.0f} | {r['p50_ms']:.1f} / {r['p99_ms']:.1f} | {ratio} |"
        )
    inproc = [r for r in runs if r.get("mode") == "inprocess"]
    if inproc:
        out += [
            "",
            "| in-process GPU engine (length-sorted batches) | profile | batch | seq/s |",
            "|---|---|---:|---:|",
        ]
        out += [f"| {r['provider']} | {r['profile']} | {r['batch']} | {r['seq_per_s']:.0f} |" for r in inproc]
    variants = gpu.get("variants", [])
    if variants:
        out += [
            "",
            "GPU layout settings tried (the best became the GPU overlay's; `command`: runs of one server start",
            "compare best with each other):",
            "",
            "| command | settings | profile | c | seqs/request | seq/s | p99 ms |",
            "|---|---|---|---:|---:|---:|---:|",
        ]
        out += [
            f"| {r.get('command', '')} | `{r.get('gpu_env', '')}` | {r['profile']} | {r.get('concurrency', 256)} | "
            f"{r['sequences_per_request']} | {r['seq_per_s']:.0f} | {r['p99_ms']:.0f} |"
            for r in variants
        ]
    metrics = gpu.get("model_service_metrics", {})
    if metrics:
        out += [
            "",
            "The model service's own metrics over each run (`/metrics` snapshots after it):",
            "",
            "| run | model calls | mean sequences per call | mean call ms | padding efficiency |",
            "|---|---:|---:|---:|---:|",
        ]
        out += [
            f"| {k} | {v['model_calls']} | {v['mean_call_size']} | {v['mean_call_ms']} | {v['padding_efficiency']} |"
            for k, v in metrics.items()
        ]
    return out + ["", "### GPU targets", "", *gpu_targets(gpu), ""]


def report_sections() -> list[list[str]]:
    """The sections docs/benchmarks.md carries beside the CPU tables: the GPU layouts (or "pending") and text
    generation (when ``bench/results-generate.json`` exists)."""
    from loadtest.bench_generate import generate_section

    gpu_path, generate = ROOT / "bench/results-gpu.json", ROOT / "bench/results-generate.json"
    sections = [gpu_section(json.loads(gpu_path.read_text()) if gpu_path.exists() else None)]
    if generate.exists():
        sections.append(generate_section(json.loads(generate.read_text())))
    return sections


def main() -> None:
    from loadtest.report import render_report

    results = json.loads((ROOT / "bench/results.json").read_text())
    (ROOT / "docs/benchmarks.md").write_text(render_report(results, report_sections()))
    print("gpu_report: wrote docs/benchmarks.md")


if __name__ == "__main__":
    main()
