"""What the kernel branch costs at serving time (issue 22: within 2x of the classifier without it).

``python -m loadtest.classifier_cost [--lengths 100,500,1460,2000] [--batches 1,16] [--threads 2] [--channels 1]
[--classes 10]``: builds the default classifier with and without the fixed-kernel branch (random weights, kernels
fitted on random sequences: the cost does not depend on what was learnt), exports both with the real exporter, and
times ONNX Runtime on the CPU, the two graphs' calls interleaved: median seconds per call over ``--repeats`` calls,
per length and batch size. Prints a markdown table and the ratio; ``--json`` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from training.tasks.classify.export import export_onnx
from training.tasks.classify.kernels import fit_kernels
from training.tasks.classify.model import SequenceClassifier
from training.tasks.classify.train import add_train_args, model_config


def build(kernel_features: int, length: int, channels: int = 1, classes: int = 10) -> SequenceClassifier:
    """The classifier ``python -m training train`` builds with its defaults (read from its parser), for this shape."""
    parser = argparse.ArgumentParser()
    add_train_args(parser)
    d = parser.parse_args(["--kernel-features", str(kernel_features)])
    torch.manual_seed(0)
    normalisation = "series" if channels == 1 else "global"  # what `auto` picks for z-normalised UCR series
    cfg = model_config(d, channels, classes, length, normalisation, kernel_length=length, kernel_seed=0)
    model = SequenceClassifier(cfg).eval()
    if model.kernels is not None:
        fit_kernels(model.kernels, [torch.randn(length, channels) for _ in range(8)])
    return model


def time_sessions(
    paths: dict[int, Path], length: int, batch: int, channels: int, threads: int, repeats: int
) -> dict[int, float]:
    """Median seconds per call of each graph on the same batch, their calls interleaved (a drift in the
    machine's speed reaches both graphs alike, not their ratio)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    sessions = {k: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for k, p in paths.items()}
    x = np.random.default_rng(0).standard_normal((batch, length, channels)).astype(np.float32)
    feed = {"x": x, "lengths": np.full(batch, length, dtype=np.int64)}
    for sess in sessions.values():
        sess.run(None, feed)  # warm-up
    times: dict[int, list[float]] = {k: [] for k in sessions}
    for _ in range(repeats):
        for k, sess in sessions.items():
            t0 = time.perf_counter()
            sess.run(None, feed)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.classifier_cost", description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="100,500,1460,2000")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--kernel-features", type=int, default=4000)
    p.add_argument(
        "--channels", type=int, default=1, help="input channels (JapaneseVowels, what make serve serves: 12)"
    )
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--json", default="", help="write the rows here")
    args = p.parse_args(argv)
    rows = []
    print("| length | batch | without kernels s | with kernels s | ratio |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="seqserve-cost-") as tmp:
        for length in [int(v) for v in args.lengths.split(",")]:
            paths = {}
            for nf in (0, args.kernel_features):
                paths[nf] = Path(tmp) / f"m{nf}_{length}.onnx"
                export_onnx(build(nf, length, args.channels, args.classes), args.channels, paths[nf])
            for batch in [int(v) for v in args.batches.split(",")]:
                t = time_sessions(paths, length, batch, args.channels, args.threads, args.repeats)
                row = {"length": length, "batch": batch, "without": t[0], "with": t[args.kernel_features]}
                row["ratio"] = row["with"] / row["without"]
                rows.append(row)
                print(f"| {length} | {batch} | {row['without']:.4f} | {row['with']:.4f} | {row['ratio']:.2f} |")
    if args.json:
        meta = {"threads": args.threads, "channels": args.channels, "classes": args.classes}
        Path(args.json).write_text(json.dumps({**meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
