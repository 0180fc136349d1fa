"""Plot Locust's ``*_stats_history.csv``: latency percentiles and throughput over time, into a PNG.

``python -m loadtest.report loadtest/results/jv_stats_history.csv loadtest/results/jv.png``
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path


def plot_history(history_csv: str | Path, png: str | Path) -> int:
    """Write the PNG; return the number of time points plotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in csv.DictReader(Path(history_csv).open()) if r["Name"] == "Aggregated"]
    if not rows:
        raise ValueError(f"{history_csv}: no 'Aggregated' rows")
    t0 = int(rows[0]["Timestamp"])
    t = [int(r["Timestamp"]) - t0 for r in rows]

    def col(name: str) -> list[float]:
        return [float(r[name]) if r[name] not in ("", "N/A") else float("nan") for r in rows]

    fig, (a, b) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for pct in ("50%", "95%", "99%"):
        a.plot(t, col(pct), label=f"p{pct[:-1]}")
    a.set_ylabel("latency (ms)"), a.legend(), a.set_title("seqserve load test")
    b.plot(t, col("Requests/s"), label="requests/s")
    b.plot(t, col("Failures/s"), label="failures/s")
    b2 = b.twinx()
    b2.plot(t, col("User Count"), color="grey", linestyle="--", label="users")
    b.set_xlabel("seconds"), b.set_ylabel("per second"), b2.set_ylabel("users"), b.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)
    return len(rows)


if __name__ == "__main__":
    n = plot_history(sys.argv[1], sys.argv[2])
    print(f"wrote {sys.argv[2]} ({n} points)", file=sys.stderr)
