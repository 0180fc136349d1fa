"""Forecaster run -> ``model.onnx`` + ``metadata.json`` (task ``forecast``), gated by parity.

The graph is ``Forecaster.forward`` (or ``DeepAR.forward``: its sampled paths' quantiles, the same answer shape):
inputs ``x`` float32 ``[B, L, 1 + F_t + C]`` (rows as
``service.tasks.forecast.engine.build_row`` makes them) and ``lengths`` int64 ``[B]``; output ``quantiles``
float32 ``[B, H, Q]``.

Parity gate, on rows of the run's own data (each series' latest history, some cut short and some with missing
values, so lengths vary): ORT vs torch within ``TOLERANCE`` relative to each row's scale, and a row's answer in ORT
(the serving path) does not change when it is batched with longer rows (``TOLERANCE`` too). Torch's own
alone-vs-batched difference is reported. The load-time check re-runs the recorded rows (``reference.npz``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from service.core.artifact import SCHEMA_VERSION
from service.tasks.forecast.calendar import Calendar
from training.onnx import OPSET, ParityError, content_version, cpu_session, quiet_known_cpp_warnings, write_metadata
from training.tasks.forecast.data import load_panel
from training.tasks.forecast.model import Forecaster, load_forecaster
from training.tasks.forecast.windows import contract, windows

MODEL_NAME = "forecaster"
TOLERANCE = 1e-4  # relative to the row's largest quantile (float32 through a 2-layer LSTM and the head)
MAX_HISTORY = 10_000  # the longest history a request may send (the model reads its last ``context``)


def export_graph(model: Forecaster, x: np.ndarray, lengths: np.ndarray, path: Path) -> None:
    with torch.no_grad(), warnings.catch_warnings(), quiet_known_cpp_warnings():
        for category in (UserWarning, DeprecationWarning, torch.jit.TracerWarning):
            warnings.simplefilter("ignore", category)
        torch.onnx.export(
            model,
            (torch.from_numpy(x), torch.from_numpy(lengths)),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["x", "lengths"],
            output_names=["quantiles"],
            dynamic_axes={"x": {0: "batch", 1: "steps"}, "lengths": {0: "batch"}, "quantiles": {0: "batch"}},
        )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def parity_rows(rows: dict[str, np.ndarray], horizon: int, n: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows of varying length from the data: some histories cut short, one with missing values."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(rows["x"]), size=min(n, len(rows["x"])), replace=False)
    x, lengths = rows["x"][pick].copy(), rows["lengths"][pick].copy()
    for k in range(1, len(pick), 2):  # every other row: a shorter history (its future moved up behind it)
        hist = int(lengths[k]) - horizon
        keep = max(1, int(hist * rng.uniform(0.2, 0.8)))
        row = np.concatenate([x[k, hist - keep : hist], x[k, hist : hist + horizon]])
        x[k] = 0.0
        x[k, : len(row)] = row
        lengths[k] = len(row)
    if len(pick) > 2:
        hist = int(lengths[2]) - horizon
        x[2, : max(1, hist // 3), 0] = np.nan  # missing values in the history
    order = np.argsort(-lengths, kind="stable")
    return x[order], lengths[order]


def parity_report(model: Forecaster, onnx_path: Path, x: np.ndarray, lengths: np.ndarray) -> dict:
    sess = cpu_session(onnx_path)
    with torch.no_grad():
        want = model(torch.from_numpy(x), torch.from_numpy(lengths)).numpy()
        torch_alone = [
            model(torch.from_numpy(x[i : i + 1, :n]), torch.from_numpy(lengths[i : i + 1])).numpy()[0]
            for i, n in enumerate(lengths.tolist())
        ]
    (got,) = sess.run(None, {"x": x, "lengths": lengths})
    scale = np.maximum(np.abs(want).max(axis=(1, 2)), 1e-6)
    ort_alone = [
        sess.run(None, {"x": x[i : i + 1, :n], "lengths": lengths[i : i + 1]})[0][0]
        for i, n in enumerate(lengths.tolist())
    ]
    vs_torch = float(max(np.abs(got[i] - want[i]).max() / scale[i] for i in range(len(x))))
    ort_inv = float(max(np.abs(ort_alone[i] - got[i]).max() / scale[i] for i in range(len(x))))
    torch_inv = float(max(np.abs(torch_alone[i] - want[i]).max() / scale[i] for i in range(len(x))))
    report = {
        "rows": len(x),
        "lengths": lengths.tolist(),
        "ort_vs_torch_max_rel_diff": vs_torch,
        "alone_vs_batched_max_rel_diff_ort": ort_inv,
        "alone_vs_batched_max_rel_diff_torch": torch_inv,
        "finite": bool(np.isfinite(got).all()),
        "tolerance": TOLERANCE,
    }
    problems = [
        msg
        for bad, msg in (
            (vs_torch > TOLERANCE, f"ORT differs from torch by {vs_torch:.3g}"),
            (ort_inv > TOLERANCE, f"ORT: a row's answer changes by {ort_inv:.3g} when batched with longer rows"),
            (torch_inv > TOLERANCE, f"torch: a row's answer changes by {torch_inv:.3g} when batched"),
            (not report["finite"], "non-finite quantiles"),
        )
        if bad
    ]
    report["passed"] = not problems
    if problems:
        raise ParityError("parity gate failed: " + "; ".join(problems) + f"\nreport: {json.dumps(report)}")
    return report


def export_forecast_run(run_dir: str | Path, out_dir: str | Path) -> dict:
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    model, cfg, metrics = load_forecaster(run_dir / "checkpoint.pt")
    panel = load_panel(
        cfg["data"],
        cfg.get("time_col"),
        cfg.get("target"),
        cfg.get("ids"),
        cfg["covariates"],
        cfg.get("frequency_given"),
    )
    panel.calendar = Calendar(panel.calendar.freq, cfg["period"])
    fc = contract(panel, cfg["horizon"], cfg["context"], model.quantiles)
    rows = windows(panel, fc, ends=True)
    x, lengths = parity_rows(rows, fc.horizon)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "model.onnx"
    t0 = time.perf_counter()
    export_graph(model, x, lengths, onnx_path)
    export_seconds = time.perf_counter() - t0
    report = parity_report(model, onnx_path, x, lengths)
    (quantiles,) = cpu_session(onnx_path).run(None, {"x": x, "lengths": lengths})
    np.savez_compressed(out_dir / "reference.npz", x=x, lengths=lengths, quantiles=quantiles)
    forecasting = {
        "horizon": fc.horizon,
        "frequency": fc.frequency,
        "period": fc.period,
        "context": fc.context,
        "quantiles": fc.quantiles,
        "covariates": fc.covariates,
        "scaling": fc.scaling,
        "time_features": fc.time_features,
    }
    graph_sha256 = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    meta = {
        "schema_version": SCHEMA_VERSION,
        "task": "forecast",
        "model_name": MODEL_NAME,
        "model_version": content_version(graph_sha256, forecasting),
        "onnx_sha256": graph_sha256,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "forecasting": forecasting,
        "max_length": max(MAX_HISTORY, cfg["length_range"][1]),
        "training_length_range": cfg["length_range"],
        "rnn": {
            "rnn": "lstm",
            "head": cfg.get("head", "quantile"),
            "ensemble": cfg.get("ensemble", 1),
            **{k: cfg[k] for k in ("hidden", "layers", "window", "base_seasons", "dropout")},
        },
        "opset": OPSET,
        "exporter": f"torch {torch.__version__} TorchScript (dynamo=False)",
        "training_metrics": metrics,
        "training_data": {
            "data": cfg["data"],
            "source": cfg["source"],
            "series": cfg["series"],
            "holdout": cfg["holdout"],
        },
        "export_seconds": round(export_seconds, 3),
        "parity": report,
        "reference": {"file": "reference.npz", "rows": len(x), "lengths": lengths.tolist()},
    }
    return write_metadata(meta, run_dir, out_dir)


def export_cli(run_dir: str | Path, out_dir: str | Path, options: argparse.Namespace) -> dict:
    """``python -m export`` for a forecaster run (its config.json says ``"task": "forecast"``)."""
    return export_forecast_run(run_dir, out_dir)
