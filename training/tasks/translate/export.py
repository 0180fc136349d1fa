"""Translator run -> ``encoder.onnx`` + decoder step ``model.onnx`` + ``tokenizer.model`` + ``metadata.json``.

The graphs (``training.tasks.translate.model``):

* encoder: ``src`` int64 [B, S] (padded with 0), ``lengths`` int64 [B] -> ``memory`` [B, S, H], ``keys``
  [B, S, H], ``mask`` [B, S] (1.0 real, 0.0 padding), ``h`` (``c``) [dec_layers, B, H];
* step: ``token`` int64 [B], ``feed`` [B, H], ``memory``, ``keys``, ``mask``, ``h`` (``c``) -> ``log_probs``
  [B, V], ``feed_out``, ``attention`` [B, S], ``h_out`` (``c_out``). Batch and source length are dynamic.

Parity gate, on held-out pairs of the run (``test.tsv``): greedy and beam-5 decoding through ONNX Runtime give
torch's tokens, token for token (the same driver, ``decode.py``, runs both); the encoder's outputs within 1e-4 of
torch's; and in ORT (the serving path) a sentence decodes to the same tokens alone as among the others, with its
encoder outputs and its first step's log-probabilities unchanged by the batch (differences reported and gated).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from service.core.artifact import SCHEMA_VERSION, file_sha256
from service.core.tokens import BOS, EOS
from training.onnx import OPSET, ParityError, content_version, cpu_session, quiet_known_cpp_warnings, write_metadata
from training.tasks.translate import decode
from training.tasks.translate.model import EncoderGraph, Seq2Seq, StepGraph
from training.tasks.translate.train import TorchStep, load_model, padded

MODEL_NAME = "translator"
ENCODER_TOLERANCE = 1e-4
INVARIANCE_TOLERANCE = 1e-6  # ORT, one sentence alone vs batched (GEMM blocking may round the last bit)
PARITY_PAIRS = 48
MAX_TARGET_TOKENS = 256


def _export(graph: torch.nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], axes: dict) -> None:
    with torch.no_grad(), warnings.catch_warnings(), quiet_known_cpp_warnings():
        for category in (UserWarning, DeprecationWarning, torch.jit.TracerWarning):
            warnings.simplefilter("ignore", category)
        torch.onnx.export(
            graph.eval(),
            args,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
        )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def export_graphs(model: Seq2Seq, out_dir: Path) -> None:
    cfg = model.cfg
    names = ["h", "c"] if cfg.rnn == "lstm" else ["h"]
    src = torch.randint(4, cfg.vocab_size, (3, 7))
    lengths = torch.tensor([7, 4, 2])  # sorted: the graph leaves the sort out
    b, s = {0: "batch"}, {0: "batch", 1: "source"}
    enc_out = ["memory", "keys", "mask", *names]
    _export(
        EncoderGraph(model),
        (src, lengths),
        out_dir / "encoder.onnx",
        ["src", "lengths"],
        enc_out,
        {"src": s, "lengths": b, "memory": s, "keys": s, "mask": s, **{n: {1: "batch"} for n in names}},
    )
    with torch.no_grad():
        memory, keys, mask, *state = model.encode(src, lengths)
    token, feed = torch.tensor([BOS] * 3), torch.zeros(3, cfg.hidden)
    step_out = ["log_probs", "feed_out", "attention", *[f"{n}_out" for n in names]]
    axes = {"token": b, "feed": b, "memory": s, "keys": s, "mask": s, "log_probs": b, "feed_out": b, "attention": s}
    axes.update({n: {1: "batch"} for n in names + step_out[3:]})
    _export(
        StepGraph(model),
        (token, feed, memory, keys, mask, *state),
        out_dir / "model.onnx",
        ["token", "feed", "memory", "keys", "mask", *names],
        step_out,
        axes,
    )


class OrtStep:
    """The two ONNX graphs behind ``decode``'s step interface (numpy in, numpy out)."""

    def __init__(self, encoder: ort.InferenceSession, step: ort.InferenceSession) -> None:
        self.enc, self.step = encoder, step
        self.state_names = [i.name for i in step.get_inputs()][5:]

    def encode(self, src: list[list[int]]) -> tuple[np.ndarray, ...]:
        x = padded(src).numpy()
        return tuple(self.enc.run(None, {"src": x, "lengths": np.array([len(r) for r in src], np.int64)}))

    def __call__(self, token: np.ndarray, feed: np.ndarray, *rest: np.ndarray) -> tuple[np.ndarray, ...]:
        memory, keys, mask, *state = rest
        feeds = {"token": token, "feed": feed, "memory": memory, "keys": keys, "mask": mask}
        return tuple(self.step.run(None, {**feeds, **dict(zip(self.state_names, state))}))


def parity_report(model: Seq2Seq, ort_runner: OrtStep, src: list[list[int]], limit: int) -> dict:
    torch_runner = TorchStep(model, torch.device("cpu"))
    with torch.no_grad():
        enc_t = torch_runner.encode(src)
    enc_o = ort_runner.encode(src)
    enc_diff = max(float(np.abs(a - b).max()) for a, b in zip(enc_t, enc_o))
    mismatched = {}
    for width in (1, 5):
        with torch.no_grad():
            want = decode.best(torch_runner, src, width, limit, BOS, EOS)
        got = decode.best(ort_runner, src, width, limit, BOS, EOS)
        mismatched["greedy" if width == 1 else f"beam{width}"] = sum(w != g for w, g in zip(want, got))
    # alone vs batched, in ORT: tokens, encoder outputs, first step
    alone_tokens, inv = 0, 0.0
    some = src[:8]
    batched5 = decode.best(ort_runner, some, 5, limit, BOS, EOS)
    for i in range(len(some)):
        alone_tokens += decode.best(ort_runner, [src[i]], 5, limit, BOS, EOS)[0] != batched5[i]
        one = ort_runner.encode([src[i]])
        n = len(src[i])
        inv = max(inv, *(float(np.abs(o[:1, :n] - b[i : i + 1, :n]).max()) for o, b in zip(one[:3], enc_o[:3])))
        inv = max(inv, *(float(np.abs(o[:, 0] - b[:, i]).max()) for o, b in zip(one[3:], enc_o[3:])))
    report = {
        "pairs": len(src),
        "encoder_ort_vs_torch_max_abs_diff": enc_diff,
        "greedy_sentences_differing": mismatched["greedy"],
        "beam5_sentences_differing": mismatched["beam5"],
        "alone_vs_batched_sentences_differing_ort": alone_tokens,
        "alone_vs_batched_encoder_max_abs_diff_ort": inv,
        "encoder_tolerance": ENCODER_TOLERANCE,
        "invariance_tolerance": INVARIANCE_TOLERANCE,
    }
    problems = []
    if enc_diff > ENCODER_TOLERANCE:
        problems.append(f"the ORT encoder differs from torch by {enc_diff:.3g} > {ENCODER_TOLERANCE}")
    if mismatched["greedy"] or mismatched["beam5"]:
        problems.append(f"ORT decodes differently from torch: {mismatched}")
    if alone_tokens or inv > INVARIANCE_TOLERANCE:
        problems.append(f"ORT: a sentence changes when batched ({alone_tokens} differ, encoder by {inv:.3g})")
    report["passed"] = not problems
    if problems:
        raise ParityError("parity gate failed: " + "; ".join(problems) + f"\nreport: {json.dumps(report)}")
    return report


def write_reference(runner: OrtStep, src: list[list[int]], path: Path) -> dict:
    """Three sentences' encoder outputs and the first step from them, as this CPU session computes them."""
    enc = runner.encode(src[:3])
    token = np.full(3, BOS, np.int64)
    feed = np.zeros((3, enc[0].shape[2]), np.float32)
    out = runner(token, feed, *enc)
    arrays = {"src": padded(src[:3]).numpy(), "lengths": np.array([len(s) for s in src[:3]], np.int64)}
    arrays.update({f"enc{i}": a for i, a in enumerate(enc)})
    arrays.update({f"step{i}": a for i, a in enumerate(out)})
    np.savez_compressed(path, **arrays)
    return {"file": path.name, "sentences": 3}


def export_translate_run(run_dir: str | Path, out_dir: str | Path) -> dict:
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    model, tok, cfg = load_model(run_dir)
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    metrics.pop("samples", None)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    export_graphs(model, out_dir)
    export_seconds = time.perf_counter() - t0
    limit = cfg["max_tokens"]
    test = [line.split("\t")[0] for line in (run_dir / "test.tsv").read_text("utf-8").splitlines()[:PARITY_PAIRS]]
    src = [tok.encode(t)[: limit - 1] + [EOS] for t in test]
    runner = OrtStep(cpu_session(out_dir / "encoder.onnx"), cpu_session(out_dir / "model.onnx"))
    report = parity_report(model, runner, src, limit)
    reference = write_reference(runner, src, out_dir / "reference.npz")
    files = {"encoder.onnx": file_sha256(out_dir / "encoder.onnx")}
    if cfg["tokenizer"] == "sentencepiece":
        shutil.copy2(run_dir / "tokenizer.model", out_dir / "tokenizer.model")
        files["tokenizer.model"] = file_sha256(out_dir / "tokenizer.model")
    m = cfg["model"]
    translation = {
        "tokenizer": cfg["tokenizer"],
        "vocab": tok.pieces,
        "rnn": m["rnn"],
        "dec_layers": m["dec_layers"],
        "hidden": m["hidden"],
        "attention": m["attention"],
        "max_source_tokens": limit,
        "max_target_tokens": MAX_TARGET_TOKENS,
        "files_sha256": files,
    }
    graph_sha256 = file_sha256(out_dir / "model.onnx")
    meta = {
        "schema_version": SCHEMA_VERSION,
        "task": "translate",
        "model_name": MODEL_NAME,
        "model_version": content_version(graph_sha256, translation),
        "onnx_sha256": graph_sha256,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "translation": translation,
        "rnn": m,
        "opset": OPSET,
        "exporter": f"torch {torch.__version__} TorchScript (dynamo=False)",
        "training_metrics": metrics,
        "export_seconds": round(export_seconds, 3),
        "parity": report,
        "reference": reference,
    }
    return write_metadata(meta, run_dir, out_dir)


def export_cli(run_dir: str | Path, out_dir: str | Path, options: argparse.Namespace) -> dict:
    """``python -m export`` for a translator run (its config.json says ``"task": "translate"``)."""
    return export_translate_run(run_dir, out_dir)
