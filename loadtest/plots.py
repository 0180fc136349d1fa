"""The plots of docs/performance.md, drawn from the benchmarks' JSON (matplotlib, no display needed).

* ``latency_vs_load``: p50 and p99 against offered load, seqserve and Triton, one panel per profile, from the
  open-loop runs of ``make bench`` (``bench/results.json``) -> ``docs/img/latency-vs-load.png``;
* ``soak_windows``: the p50 and p99 of each window of ``make soak`` (``bench/results-soak.json``) with the
  flatness line (2x the median window p99) -> ``docs/img/soak-p99.png``.

``python -m loadtest.plots`` redraws both from the JSON already there.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "docs" / "img"
COLOURS = {"seqserve": "tab:blue", "triton": "tab:orange"}


def _pyplot():  # noqa: ANN202 - matplotlib's module
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_vs_load(results: dict, out: Path = IMG / "latency-vs-load.png") -> Path | None:
    """One panel per profile: p50 (dashed) and p99 (solid) in ms against offered requests/s, per system."""
    runs = [r for r in results.get("runs", []) if r.get("mode") == "open" and r.get("system") in COLOURS]
    profiles = sorted({r["profile"] for r in runs})
    if not profiles:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(profiles), figsize=(5.5 * len(profiles), 4), squeeze=False)
    for ax, profile in zip(axes[0], profiles):
        for system, colour in COLOURS.items():
            mine = sorted((r for r in runs if r["profile"] == profile and r["system"] == system), key=_load)
            if not mine:
                continue
            loads = [_load(r) for r in mine]
            ax.plot(loads, [r["p99_ms"] for r in mine], "o-", color=colour, label=f"{system} p99")
            ax.plot(loads, [r["p50_ms"] for r in mine], "s--", color=colour, label=f"{system} p50")
        ax.set_title(f"{profile}: open loop, equal offered load")
        ax.set_xlabel("offered requests/s (one sequence each)")
        ax.set_ylabel("latency ms")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    machine = results.get("machine", {})
    fig.suptitle(f"make bench, {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, {machine.get('date', '')}")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _load(r: dict) -> float:
    return float(r["offered_per_s"])


def soak_windows(result: dict, out: Path = IMG / "soak-p99.png") -> Path | None:
    """p50 and p99 per window over the soak, with 2x the median window p99 (the flatness target)."""
    windows = result.get("windows") or []
    if not windows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.8))
    t = [w["t_s"] for w in windows]
    p99 = [w["p99_ms"] for w in windows]
    ax.plot(t, p99, "o-", label="p99 of the window")
    ax.plot(t, [w["p50_ms"] for w in windows], "s--", label="p50 of the window")
    ax.axhline(2 * statistics.median(p99), color="tab:red", lw=1, label="2 x median window p99")
    ax.set_xlabel("seconds into the soak")
    ax.set_ylabel("latency ms")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    offered = result.get("offered_seq_per_s")
    ax.set_title(f"make soak: open loop at {offered} seq/s, {len(windows)} windows")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def main() -> None:
    for name, draw in (("results.json", latency_vs_load), ("results-soak.json", soak_windows)):
        path = ROOT / "bench" / name
        if path.exists():
            print(draw(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
