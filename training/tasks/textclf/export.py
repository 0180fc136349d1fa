"""Text-classifier run -> ``model.onnx`` + ``tokenizer.model`` + ``metadata.json`` (task ``textclf``), gated by parity.

The graph is ``ExportGraph``: ``x`` float32 ``[B, T, 1]`` (``<s>`` + the text's token ids, as floats) and
``lengths`` int64 ``[B]`` -> ``probabilities`` ``[B, C]`` and ``attention`` ``[B, T]``.

Parity gate, on held-out texts of the run's own data (lengths from the shortest to the longest): ORT vs torch
within ``TOLERANCE``, and a text's answer in ORT and in torch does not change when it is batched with longer
ones. The load-time check re-runs the recorded texts (``reference.npz``).
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
import torch

from service.core.artifact import SCHEMA_VERSION, file_sha256
from service.core.tokens import Tokenizer
from training.onnx import OPSET, ParityError, content_version, cpu_session, quiet_known_cpp_warnings, write_metadata
from training.tasks.textclf.data import load_corpus
from training.tasks.textclf.model import ExportGraph, TextClassifier
from training.tasks.textclf.train import encode, load_textclf

MODEL_NAME = "textclf"
TOLERANCE = 1e-4
MAX_TOKENS = 512  # the longest text (in tokens, with <s>) a request may send


def as_rows(seqs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Token sequences -> the graph's padded float32 ``x`` ``[B, T, 1]`` and ``lengths``."""
    lengths = np.array([len(s) for s in seqs], np.int64)
    x = np.zeros((len(seqs), int(lengths.max()), 1), np.float32)
    for i, s in enumerate(seqs):
        x[i, : len(s), 0] = s
    return x, lengths


def export_graph(model: TextClassifier, x: np.ndarray, lengths: np.ndarray, path: Path) -> None:
    with torch.no_grad(), warnings.catch_warnings(), quiet_known_cpp_warnings():
        for category in (UserWarning, DeprecationWarning, torch.jit.TracerWarning):
            warnings.simplefilter("ignore", category)
        torch.onnx.export(
            ExportGraph(model),
            (torch.from_numpy(x), torch.from_numpy(lengths)),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["x", "lengths"],
            output_names=["probabilities", "attention"],
            dynamic_axes={
                "x": {0: "batch", 1: "steps"},
                "lengths": {0: "batch"},
                "probabilities": {0: "batch"},
                "attention": {0: "batch", 1: "steps"},
            },
        )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def parity_texts(seqs: list[np.ndarray], n: int = 12) -> list[np.ndarray]:
    """``n`` texts from the shortest to the longest, longest first (the export example)."""
    order = np.argsort([len(s) for s in seqs], kind="stable")
    pick = order[np.linspace(0, len(order) - 1, min(n, len(order))).round().astype(int)]
    return [seqs[i] for i in pick[::-1]]


def parity_report(model: TextClassifier, onnx_path: Path, x: np.ndarray, lengths: np.ndarray) -> dict:
    sess, graph = cpu_session(onnx_path), ExportGraph(model).eval()
    with torch.no_grad():
        p_t, a_t = (v.numpy() for v in graph(torch.from_numpy(x), torch.from_numpy(lengths)))
        alone_t = [graph(torch.from_numpy(x[i : i + 1, :n]), torch.from_numpy(lengths[i : i + 1]))[0].numpy()[0]
                   for i, n in enumerate(lengths.tolist())]  # fmt: skip
    p_o, a_o = sess.run(None, {"x": x, "lengths": lengths})
    alone_o = [sess.run(None, {"x": x[i : i + 1, :n], "lengths": lengths[i : i + 1]}) for i, n in enumerate(lengths)]
    vs_torch = max(float(np.abs(p_o - p_t).max()), float(np.abs(a_o - a_t).max()))
    ort_inv = max(
        max(float(np.abs(p[0] - p_o[i]).max()), float(np.abs(a[0] - a_o[i, : lengths[i]]).max()))
        for i, (p, a) in enumerate(alone_o)
    )
    torch_inv = max(float(np.abs(alone_t[i] - p_t[i]).max()) for i in range(len(x)))
    padding_att = float(max(np.abs(a_o[i, n:]).max(initial=0.0) for i, n in enumerate(lengths.tolist())))
    report = {
        "texts": len(x),
        "lengths": lengths.tolist(),
        "ort_vs_torch_max_abs_diff": vs_torch,
        "alone_vs_batched_max_abs_diff_ort": ort_inv,
        "alone_vs_batched_max_abs_diff_torch": torch_inv,
        "attention_on_padding": padding_att,
        "tolerance": TOLERANCE,
    }
    problems = [
        msg
        for bad, msg in (
            (vs_torch > TOLERANCE, f"ORT differs from torch by {vs_torch:.3g}"),
            (ort_inv > TOLERANCE, f"ORT: a text's answer changes by {ort_inv:.3g} when batched with longer texts"),
            (torch_inv > TOLERANCE, f"torch: a text's answer changes by {torch_inv:.3g} when batched"),
            (padding_att > 0, "attention on padding"),
        )
        if bad
    ]
    report["passed"] = not problems
    if problems:
        raise ParityError("parity gate failed: " + "; ".join(problems) + f"\nreport: {json.dumps(report)}")
    return report


def base_lm(pretrained: str) -> dict:
    """What the served model was pre-trained from (the LM run's path, its metrics' headline, its weights' hash)."""
    if pretrained == "none":
        return {"run": "none"}
    run = Path(pretrained)
    info: dict = {"run": str(pretrained)}
    if (run / "checkpoint.pt").exists():
        info["checkpoint_sha256"] = file_sha256(run / "checkpoint.pt")[:16]
    if (run / "metrics.json").exists():
        m = json.loads((run / "metrics.json").read_text())
        info.update({k: m.get(k) for k in ("val_loss_nats", "train_tokens", "steps", "vocab_size")})
    return info


def export_textclf_run(run_dir: str | Path, out_dir: str | Path) -> dict:
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    model, ck = load_textclf(run_dir / "checkpoint.pt")
    cfg = json.loads((run_dir / "config.json").read_text())
    tok = Tokenizer("sentencepiece", run_dir / "tokenizer.model")
    corpus = load_corpus(cfg["data"], cfg.get("test"))
    x, lengths = as_rows(parity_texts(encode(tok, corpus.test.texts)))
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "model.onnx"
    t0 = time.perf_counter()
    export_graph(model, x, lengths, onnx_path)
    export_seconds = time.perf_counter() - t0
    report = parity_report(model, onnx_path, x, lengths)
    probs, att = cpu_session(onnx_path).run(None, {"x": x, "lengths": lengths})
    np.savez_compressed(out_dir / "reference.npz", x=x, lengths=lengths, probabilities=probs, attention=att)
    shutil.copy2(run_dir / "tokenizer.model", out_dir / "tokenizer.model")
    lm = model.cfg.lm
    section = {
        "tokenizer": "sentencepiece",
        "vocab": tok.pieces,
        "rnn": lm["rnn"],
        "layers": lm["layers"],
        "hidden": lm["hidden"],
        "max_tokens": MAX_TOKENS,
        "base_lm": base_lm(cfg["pretrained"]),
        "files_sha256": {"tokenizer.model": file_sha256(out_dir / "tokenizer.model")},
    }
    graph_sha256 = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    contract = {**section, "classes": ck["classes"]}
    meta = {
        "schema_version": SCHEMA_VERSION,
        "task": "textclf",
        "model_name": MODEL_NAME,
        "model_version": content_version(graph_sha256, contract),
        "onnx_sha256": graph_sha256,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "classes": ck["classes"],
        "text_classification": section,
        "training_length_range": cfg["length_range"],
        "rnn": {
            "rnn": lm["rnn"],
            "hidden": lm["hidden"],
            "layers": lm["layers"],
            "embedding": lm["embedding"],
            "pooling": "concat (last, max, mean, attention)",
        },  # fmt: skip
        "opset": OPSET,
        "exporter": f"torch {torch.__version__} TorchScript (dynamo=False)",
        "training_metrics": json.loads((run_dir / "metrics.json").read_text()),
        "training_data": {"data": cfg["data"], "test": cfg.get("test"), "source": corpus.source},
        "export_seconds": round(export_seconds, 3),
        "parity": report,
        "reference": {"file": "reference.npz", "texts": len(x), "lengths": lengths.tolist()},
    }
    return write_metadata(meta, run_dir, out_dir)


def export_cli(run_dir: str | Path, out_dir: str | Path, options: argparse.Namespace) -> dict:
    """``python -m export`` for a text-classifier run (its config.json says ``"task": "textclf"``)."""
    return export_textclf_run(run_dir, out_dir)
