"""Language-model run -> step graph ``model.onnx`` + ``metadata.json`` (task ``generate``), gated by parity.

The graph (``training.tasks.generate.model.StepGraph``): inputs ``tokens`` int64 [B, K], ``lengths`` int64 [B]
(1..K real tokens per stream), ``h`` (and ``c`` for an LSTM) float32 [layers, B, hidden]; outputs ``log_probs`` float32
[B, V] after each stream's last real token, and ``h_out`` (``c_out``), the state there. Decoding calls it with
K = 1; a prompt is read in calls of up to ``chunk`` tokens.

Parity gate: reading a held-out passage step by step through ORT (a first chunk, then one token a call) gives
torch's whole-passage probabilities within 1e-5 (the log-probabilities' difference is reported: for tokens the
model all but rules out, float32 rounding of a log-probability near -20 is ~1e-5), and a stream's outputs do
not change in ORT (the serving path) when it is batched with others of other lengths and states: exactly, bit
for bit. Torch's own alone-vs-batched difference is reported but not gated: torch's CPU kernels round differently
by batch size (up to ~1.1e-5 measured on a trained 2x512 LSTM, `docs/generation.md`), which says nothing about the
artifact; the ORT-vs-torch tolerance already bounds how far the served graph may be from the model.

Form presets (``generation.forms``, used by ``service/tasks/generate/forms.py``): for a corpus of one document a
line, the commonest document shapes, with every non-punctuation character a free position: for Tang poems ``5x4``,
``5x8``, ``7x4``, ``7x8`` (line length x lines), each a template such as ``[null x5, "，", null x5, "。", ...]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from service.core.artifact import SCHEMA_VERSION
from service.core.vocab import is_free_char
from training import data
from training.onnx import OPSET, ParityError, content_version, cpu_session, quiet_known_cpp_warnings, write_metadata
from training.tasks.generate.model import CharLM, StepGraph
from training.tasks.generate.train import VAL_FRACTION, load_lm

MODEL_NAME = "charlm"
CHUNK = 64  # the most tokens per stream per call the service should use
MAX_PROMPT_TOKENS = 4096
MAX_NEW_TOKENS = 1024
PROB_TOLERANCE = 1e-5  # step-by-step ORT vs torch's whole-passage forward, probabilities (as the classifier's gate)
INVARIANCE_TOLERANCE = 0.0  # ORT, the serving path: one stream alone vs batched, bit for bit
FORM_MIN_SHARE = 0.05  # a document shape becomes a preset when at least this share of documents has it
MAX_FORMS = 8


def export_step_graph(model: CharLM, path: Path) -> None:
    graph = StepGraph(model).eval()
    cfg = model.cfg
    tokens = torch.randint(0, cfg.vocab_size, (3, 8))
    lengths = torch.tensor([8, 5, 2], dtype=torch.int64)  # sorted: the graph leaves the sort out
    state = [torch.zeros(cfg.layers, 3, cfg.hidden) for _ in range(2 if cfg.rnn == "lstm" else 1)]
    names = ["h", "c"][: len(state)]
    outs = ["log_probs", *[f"{n}_out" for n in names]]
    axes = {"tokens": {0: "batch", 1: "steps"}, "lengths": {0: "batch"}, "log_probs": {0: "batch"}}
    axes.update({n: {1: "batch"} for n in names + outs[1:]})
    with torch.no_grad(), warnings.catch_warnings(), quiet_known_cpp_warnings():
        # the RNN batch-size, tracer and constant-folding notes, and the legacy-exporter notice: parity proves it
        for category in (UserWarning, DeprecationWarning, torch.jit.TracerWarning):
            warnings.simplefilter("ignore", category)
        torch.onnx.export(
            graph,
            (tokens, lengths, *state),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["tokens", "lengths", *names],
            output_names=outs,
            dynamic_axes=axes,
        )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def step(sess: ort.InferenceSession, tokens: np.ndarray, lengths: np.ndarray, state: list[np.ndarray]) -> list:
    names = ["h", "c"][: len(state)]
    return sess.run(None, {"tokens": tokens, "lengths": lengths, **dict(zip(names, state))})


def torch_alone_vs_batched(
    graph: StepGraph, toks: np.ndarray, lens: np.ndarray, states: list[np.ndarray], row: int
) -> float:
    """Largest absolute difference between torch's step outputs for stream ``row`` alone and inside the batch
    (reported by the gate, measured by ``loadtest.torch_rounding``: torch rounds differently by batch size)."""
    with torch.no_grad():
        batched = graph(torch.from_numpy(toks), torch.from_numpy(lens), *map(torch.from_numpy, states))
        alone = graph(
            torch.from_numpy(toks[row : row + 1, : lens[row]]),
            torch.from_numpy(lens[row : row + 1]),
            *(torch.from_numpy(s[:, row : row + 1]) for s in states),
        )
    return max(float((a[..., 0, :] - b[..., row, :]).abs().max()) for a, b in zip(alone, batched))


def parity_report(model: CharLM, sess: ort.InferenceSession, ids: np.ndarray, seed: int = 0) -> dict:
    cfg = model.cfg
    rng = np.random.default_rng(seed)
    n_state = 2 if cfg.rnn == "lstm" else 1
    zero = [np.zeros((cfg.layers, 1, cfg.hidden), np.float32) for _ in range(n_state)]
    worst, worst_inv = {"prob": 0.0, "logp": 0.0}, {"ort": 0.0, "torch": 0.0}
    graph = StepGraph(model).eval()
    for start in rng.integers(0, len(ids) - 200, size=4):
        passage = ids[start : start + 96]
        with torch.no_grad():
            logits, _ = model(torch.from_numpy(passage)[None])
        want = torch.log_softmax(logits[0], -1).numpy()  # [96, V]
        first = 17
        out = step(sess, passage[None, :first], np.array([first]), zero)
        got = [out[0][0]]
        state = out[1:]
        for t in range(first, len(passage)):
            out = step(sess, passage[None, t : t + 1], np.array([1]), state)
            got.append(out[0][0])
            state = out[1:]
        got_logp = np.stack(got)
        worst["logp"] = max(worst["logp"], float(np.abs(got_logp - want[first - 1 :]).max()))
        worst["prob"] = max(worst["prob"], float(np.abs(np.exp(got_logp) - np.exp(want[first - 1 :])).max()))
        # batch invariance: the passage's first 9 tokens from a carried state, alone and among others
        others = [ids[s : s + 12] for s in rng.integers(0, len(ids) - 20, size=4)]
        lens = np.array([12, 9, 3, 12, 1])
        toks = np.zeros((5, 12), np.int64)
        for r, seq in zip((0, 2, 3, 4), others):
            toks[r, : lens[r]] = seq[: lens[r]]
        toks[1, :9] = passage[:9]
        states = [rng.standard_normal((cfg.layers, 5, cfg.hidden)).astype(np.float32) * 0.5 for _ in range(n_state)]
        batched = step(sess, toks, lens, states)
        alone = step(sess, toks[1:2, :9], lens[1:2], [s[:, 1:2] for s in states])
        worst_inv["ort"] = max(
            worst_inv["ort"], *(float(np.abs(a[..., 0, :] - b[..., 1, :]).max()) for a, b in zip(alone, batched))
        )
        worst_inv["torch"] = max(worst_inv["torch"], torch_alone_vs_batched(graph, toks, lens, states, 1))
    report = {
        "stepwise_ort_vs_torch_max_abs_prob_diff": worst["prob"],
        "stepwise_ort_vs_torch_max_abs_logp_diff": worst["logp"],
        "alone_vs_batched_max_abs_diff_ort": worst_inv["ort"],
        "alone_vs_batched_max_abs_diff_torch": worst_inv["torch"],
        "prob_tolerance": PROB_TOLERANCE,
        "invariance_tolerance": INVARIANCE_TOLERANCE,
        "gated": ["stepwise_ort_vs_torch_max_abs_prob_diff", "alone_vs_batched_max_abs_diff_ort"],
    }
    problems = []
    if worst["prob"] > PROB_TOLERANCE:
        problems.append(f"step-by-step ORT differs from torch by {worst['prob']:.3g} > {PROB_TOLERANCE}")
    if worst_inv["ort"] > INVARIANCE_TOLERANCE:  # torch's own figure is reported only (module docstring)
        problems.append(f"ORT: a stream's output changes by {worst_inv['ort']:.3g} when batched with others")
    report["passed"] = not problems
    if problems:
        raise ParityError("parity gate failed: " + "; ".join(problems) + f"\nreport: {json.dumps(report)}")
    return report


def form_presets(lines: list[str]) -> dict:
    """The commonest document shapes (free characters as ``None``) held by >= 5% of the documents."""
    shapes = Counter(tuple(None if is_free_char(c) else c for c in line) for line in lines)
    forms = {}
    for shape, count in shapes.most_common(MAX_FORMS):
        if count < FORM_MIN_SHARE * len(lines) or all(s is None for s in shape) or shape[-1] is None:
            continue
        segments, run = [], 0
        for s in shape:
            if s is None:
                run += 1
            else:
                segments.append(run)
                run = 0
        name = f"{segments[0]}x{len(segments)}" if len(set(segments)) == 1 else "-".join(map(str, segments))
        forms[name] = {"template": list(shape), "lines": len(segments), "share": round(count / len(lines), 4)}
    return forms


def write_reference(sess: ort.InferenceSession, ids: np.ndarray, cfg: dict, path: Path, seed: int = 0) -> dict:
    """Three streams of different lengths from a random state, and this CPU session's outputs."""
    rng = np.random.default_rng(seed)
    n_state = 2 if cfg["rnn"] == "lstm" else 1
    lens = np.array([16, 5, 1])
    toks = np.stack([ids[s : s + 16] for s in rng.integers(0, len(ids) - 20, size=3)])
    states = [rng.standard_normal((cfg["layers"], 3, cfg["hidden"])).astype(np.float32) * 0.5 for _ in range(n_state)]
    outs = step(sess, toks, lens, states)
    arrays = {"tokens": toks, "lengths": lens, **{f"state{i}": s for i, s in enumerate(states)}}
    arrays.update({f"out{i}": o for i, o in enumerate(outs)})
    np.savez_compressed(path, **arrays)
    return {"file": path.name, "streams": 3, "lengths": lens.tolist()}


def export_lm_run(run_dir: str | Path, out_dir: str | Path) -> dict:
    """Export a language-model run's ``checkpoint.pt`` into ``out_dir``; return the metadata written."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    model, ck = load_lm(run_dir / "checkpoint.pt")
    cfg = ck["config"]
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "model.onnx"
    t0 = time.perf_counter()
    export_step_graph(model, onnx_path)
    export_seconds = time.perf_counter() - t0
    text = data.read_text(metrics["data"], ck["documents"]) if metrics.get("data") else None
    if text is None or text.vocab != ck["vocab"]:
        raise ParityError(f"{run_dir}: the training text is missing or changed; cannot check parity on it")
    val = text.ids[int(len(text.ids) * (1 - VAL_FRACTION)) :]
    sess = cpu_session(onnx_path)
    report = parity_report(model, sess, val)
    reference = write_reference(sess, val, cfg, out_dir / "reference.npz")
    vocab = ck["vocab"]
    special = {s.strip("<>"): i for i, s in enumerate(vocab) if s in (data.UNK, data.BOS, data.EOS)}
    forms = {}
    if ck["documents"] == "lines":
        lines = [line for line in Path(metrics["data"]).read_text(encoding="utf-8").splitlines() if line.strip()]
        forms = form_presets(lines)
    generation = {
        "vocab": vocab,
        "special_ids": special,
        "rnn": cfg["rnn"],
        "layers": cfg["layers"],
        "hidden": cfg["hidden"],
        "chunk": CHUNK,
        "max_prompt_tokens": MAX_PROMPT_TOKENS,
        "max_new_tokens": MAX_NEW_TOKENS,
        "forms": forms,
    }
    graph_sha256 = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    meta = {
        "schema_version": SCHEMA_VERSION,
        "task": "generate",
        "model_name": MODEL_NAME,
        "model_version": content_version(graph_sha256, generation),
        "onnx_sha256": graph_sha256,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "generation": generation,
        "rnn": cfg,
        "documents": ck["documents"],
        "opset": OPSET,
        "exporter": f"torch {torch.__version__} TorchScript (dynamo=False)",
        "training_metrics": metrics,
        "training_data": {"text": metrics.get("data")},
        "export_seconds": round(export_seconds, 3),
        "parity": report,
        "reference": reference,
    }
    return write_metadata(meta, run_dir, out_dir)


def export_cli(run_dir: str | Path, out_dir: str | Path, options: argparse.Namespace) -> dict:
    """``python -m export`` for a language-model run (its config.json says ``"task": "generate"``)."""
    return export_lm_run(run_dir, out_dir)
