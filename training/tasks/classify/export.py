"""torch checkpoint -> ``model.onnx`` + ``metadata.json``, gated by a parity check against torch.

The artifact directory is the only contract between training and serving:

* ``model.onnx``: inputs ``x`` float32 [batch, time, features] (raw, un-normalised, zero-padded) and
  ``lengths`` int64 [batch]; outputs ``probabilities`` float32 [batch, classes] and ``attention``
  float32 [batch, time] (zero on padding, sums to 1 over each sequence's own steps).
* ``metadata.json``: everything the service needs to validate inputs and label outputs (see ``export_run``).
* ``reference.npz``: a few held-out sequences (padded ``x``, ``lengths``) and the CPU graph's outputs for them
  (``probabilities``, ``attention``); the service checks every session it opens against them (runtime.py).

The TorchScript exporter (``dynamo=False``, opset 17) turns packed sequences into native ONNX RNN ops with
``sequence_lens``; the dynamo exporter fails on them or silently produces static shapes (see shared notes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from service.core.artifact import SCHEMA_VERSION
from training import data
from training.onnx import OPSET, ParityError, content_version, cpu_session, quiet_known_cpp_warnings, write_metadata
from training.tasks.classify.model import ExportWrapper, load_checkpoint

MODEL_NAME = "seqclassifier"
PROB_TOLERANCE = 1e-5  # ORT vs torch, max abs difference of probabilities
# One sequence alone vs batched with longer ones, in the ONNX graph (what is served). Torch's own figure is
# reported, not gated: its CPU kernels round differently with batch size (~1e-6 here, as for the language
# model: loadtest/torch_rounding.py), which is a property of torch's kernels, not of the artifact.
INVARIANCE_TOLERANCE = 1e-6
# The longest sequence the service accepts unless export (--max-length) or serving (SEQSERVE_MAX_LENGTH) says
# otherwise. An RNN takes any length: this is a resource limit (time and memory of one call), not a property
# of the model. The training length range is recorded beside it for monitoring.
DEFAULT_MAX_LENGTH = 4096
REFERENCE_SEQUENCES = 8  # recorded for the service's load-time check: shortest, longest, random


def export_onnx(model: torch.nn.Module, feature_dim: int, path: Path) -> None:
    wrapper = ExportWrapper(model).eval()
    x = torch.randn(3, 11, feature_dim)
    lengths = torch.tensor([11, 7, 4], dtype=torch.int64)
    with torch.no_grad(), warnings.catch_warnings(), quiet_known_cpp_warnings():
        # Known, harmless here: GRU/LSTM "batch_size other than 1" and constant-folding notes (parity proves it).
        warnings.simplefilter("ignore", UserWarning)
        torch.onnx.export(
            wrapper,
            (x, lengths),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["x", "lengths"],
            output_names=["probabilities", "attention"],
            dynamic_axes={
                "x": {0: "batch", 1: "time"},
                "lengths": {0: "batch"},
                "probabilities": {0: "batch"},
                "attention": {0: "batch", 1: "time"},
            },
        )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if not dims[0].dim_param or (value.name in ("x", "attention") and not dims[1].dim_param):
            raise ParityError(f"exported {value.name} has static batch/time dims {dims}: the exporter went static")


def _run_ort(sess: ort.InferenceSession, seqs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    x, lengths = data.pad(seqs)
    probs, att = sess.run(None, {"x": x, "lengths": lengths})
    return probs, att


@torch.no_grad()
def _run_torch(model: torch.nn.Module, seqs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    x, lengths = data.pad(seqs)
    probs, att = ExportWrapper(model)(torch.from_numpy(x), torch.from_numpy(lengths))
    return probs.numpy(), att.numpy()


def parity_report(
    model: torch.nn.Module, sess: ort.InferenceSession, held_out: data.Dataset, seed: int = 0, n_alone: int = 48
) -> dict:
    """Compare ORT with torch on mixed-length batches, and each sequence alone vs batched with longer ones."""
    rng = np.random.default_rng(seed)
    seqs = held_out.sequences
    order = rng.permutation(len(seqs))  # random order: every batch mixes lengths
    prob_diff = att_diff = 0.0
    for i in range(0, len(order), 32):
        batch = [seqs[j] for j in order[i : i + 32]]
        po, ao = _run_ort(sess, batch)
        pt, at = _run_torch(model, batch)
        prob_diff = max(prob_diff, float(np.abs(po - pt).max()))
        att_diff = max(att_diff, float(np.abs(ao - at).max()))
    lengths = held_out.lengths
    longest = [seqs[j] for j in np.argsort(-lengths, kind="stable")[:7]]
    shortest_first = np.argsort(lengths, kind="stable")
    picks = np.unique(np.concatenate([shortest_first[: n_alone // 2], rng.choice(len(seqs), n_alone // 2)]))
    inv = {"ort": 0.0, "torch": 0.0}
    for j in picks:
        for name, run in (("ort", lambda b: _run_ort(sess, b)), ("torch", lambda b: _run_torch(model, b))):
            p_alone, a_alone = run([seqs[j]])
            p_batch, a_batch = run([*longest[:3], seqs[j], *longest[3:]])
            n = len(seqs[j])
            d = max(
                float(np.abs(p_alone[0] - p_batch[3]).max()),
                float(np.abs(a_alone[0, :n] - a_batch[3, :n]).max()),
                float(np.abs(a_batch[3, n:]).max(initial=0.0)),
            )
            inv[name] = max(inv[name], d)
    report = {
        "sequences": len(seqs),
        "length_range": [int(lengths.min()), int(lengths.max())],
        "ort_vs_torch_max_abs_prob_diff": prob_diff,
        "ort_vs_torch_max_abs_attention_diff": att_diff,
        "alone_vs_batched_checked": int(len(picks)),
        "alone_vs_batched_max_abs_diff_ort": inv["ort"],
        "alone_vs_batched_max_abs_diff_torch": inv["torch"],
        "prob_tolerance": PROB_TOLERANCE,
        "invariance_tolerance": INVARIANCE_TOLERANCE,
        "gated": [
            "ort_vs_torch_max_abs_prob_diff",
            "ort_vs_torch_max_abs_attention_diff",
            "alone_vs_batched_max_abs_diff_ort",
        ],
    }
    problems = []
    if prob_diff > PROB_TOLERANCE or att_diff > PROB_TOLERANCE:
        problems.append(f"ORT differs from torch by {max(prob_diff, att_diff):.3g} > {PROB_TOLERANCE}")
    if inv["ort"] > INVARIANCE_TOLERANCE:
        problems.append(f"ort: a sequence's output changes by {inv['ort']:.3g} when batched with longer ones")
    report["passed"] = not problems
    if problems:
        raise ParityError("parity gate failed: " + "; ".join(problems) + f"\nreport: {json.dumps(report)}")
    return report


def write_reference(sess: ort.InferenceSession, held_out: data.Dataset, path: Path, seed: int = 0) -> dict:
    """Record held-out sequences and this (CPU, parity-checked) session's outputs for them."""
    order = np.argsort(held_out.lengths, kind="stable")
    rng = np.random.default_rng(seed)
    k = REFERENCE_SEQUENCES
    picks = [*order[:2], *order[-2:], *rng.choice(len(order), size=min(k, len(order)), replace=False)]
    picks = list(dict.fromkeys(int(i) for i in picks))[:k]
    x, lengths = data.pad([held_out.sequences[i] for i in picks])
    probs, att = sess.run(None, {"x": x, "lengths": lengths})
    np.savez_compressed(path, x=x, lengths=lengths, probabilities=probs, attention=att)
    return {"file": path.name, "sequences": len(picks), "lengths": lengths.tolist()}


def store_data(ckpt: dict, out_dir: Path) -> dict[str, dict[str, str]]:
    """Copies of the original training and test files in the artifact (``data-train.ts``, ...), so that a
    retrain needs only the model store (issue 29); a retrained run's originals, not its feedback-extended files.
    A file no longer where training found it is left out (the retrain then needs ``--train``/``--test``)."""
    from service.core.artifact import file_sha256

    args = ckpt.get("args", {})
    files = {}
    for split in ("train", "test"):
        src = Path(args.get(f"original_{split}") or ckpt[f"{split}_path"])
        if src.is_file():
            name = f"data-{split}{src.suffix}"
            shutil.copyfile(src, out_dir / name)
            files[split] = {"file": name, "sha256": file_sha256(out_dir / name), "source": str(src)}
    return files


def export_run(
    run_dir: str | Path, out_dir: str | Path, held_out_path: str | None = None, max_length: int | None = None
) -> dict:
    """Export ``run_dir/checkpoint.pt`` into ``out_dir``; return the metadata written to metadata.json."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    model, ckpt = load_checkpoint(str(run_dir / "checkpoint.pt"))
    cfg = ckpt["model_config"]
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "model.onnx"
    t0 = time.perf_counter()
    export_onnx(model, cfg["feature_dim"], onnx_path)
    export_seconds = time.perf_counter() - t0
    held_out = data.load(held_out_path or ckpt["test_path"])
    sess = cpu_session(onnx_path)
    report = parity_report(model, sess, held_out)
    reference = write_reference(sess, held_out, out_dir / "reference.npz")
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    contract = {
        "classes": ckpt["classes"],
        "feature_dim": cfg["feature_dim"],
        "max_length": int(max_length or max(DEFAULT_MAX_LENGTH, ckpt["max_length"])),
        "training_length_range": list(ckpt.get("length_range", [1, ckpt["max_length"]])),
        "normalisation": {"mode": cfg.get("normalisation", "global"), **ckpt["normalisation"]},
    }
    graph_sha256 = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    meta = {
        "schema_version": SCHEMA_VERSION,
        "model_name": MODEL_NAME,
        "model_version": content_version(graph_sha256, contract),
        "onnx_sha256": graph_sha256,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **contract,
        "rnn": {
            k: cfg.get(k)
            for k in (
                "rnn",
                "hidden",
                "layers",
                "bidirectional",
                "attention",
                "dropout",
                "stride",
                "conv_channels",
                "conv_kernels",
                "kernel_features",
            )
        },
        "inputs": {
            "x": "float32 [batch, time, feature_dim], raw features, zero-padded",
            "lengths": "int64 [batch], valid steps per sequence",
        },
        "outputs": {"probabilities": "float32 [batch, classes]", "attention": "float32 [batch, time], zero on padding"},
        "opset": OPSET,
        "exporter": f"torch {torch.__version__} TorchScript (dynamo=False)",
        "training_metrics": {k: v for k, v in metrics.items() if k != "history"},
        "training_data": {"train": ckpt["train_path"], "test": ckpt["test_path"], "files": store_data(ckpt, out_dir)},
        "export_seconds": round(export_seconds, 3),
        "parity": report,
        "reference": reference,
    }
    return write_metadata(meta, run_dir, out_dir)


def export_cli(run_dir: str | Path, out_dir: str | Path, options: argparse.Namespace) -> dict:
    """``python -m export`` for a classifier run (``--held-out``, ``--max-length``)."""
    return export_run(run_dir, out_dir, options.held_out, options.max_length)
