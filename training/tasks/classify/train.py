"""Train a sequence classifier: ``python -m training train --train X.ts --test Y.ts --out runs/NAME``.

Linear on purpose: load data, split, build the model, loop over epochs with early stopping, evaluate on the test
split, write checkpoint.pt / config.json / metrics.json / learning_curves.png. The schedule is ``--epochs`` (the
same seed gives the same model on an idle or a busy machine); ``--time-budget`` is an opt-in wall-clock cap that
re-plans the schedule to end within it and says so (the log, ``stopped_by`` and ``time_budget_cut`` in metrics).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training import data
from training.loop import (
    length_batches,
    lr_factor,
    pick_device,
    plan_epochs,
    plot_curves,
    progress_bar,
    seed_everything,
)
from training.tasks.classify.model import (
    RIDGE_MAX_SEQUENCES,
    ModelConfig,
    SequenceClassifier,
    auto_stride,
    fit_kernel_branch,
    kernel_branch_logits,
    to_tensors,
)

DEFAULT_TRAIN = "data/JapaneseVowels/JapaneseVowels_TRAIN.ts"
DEFAULT_TEST = "data/JapaneseVowels/JapaneseVowels_TEST.ts"


BACK_END = ("rnn", "att_v", "att_w", "head")  # what --freeze-front leaves trainable


class ArchitectureChanged(ValueError):
    """``--init-from`` names a checkpoint whose model configuration differs from this run's."""


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train", default=DEFAULT_TRAIN, help=".ts or .jsonl training file")
    p.add_argument("--test", default=DEFAULT_TEST, help=".ts or .jsonl test file (never used for selection)")
    p.add_argument(
        "--val-fraction",
        default="auto",
        help="stratified validation split of --train; auto: 0.15 from 300 sequences up, else 0 "
        "(train on all and select on training accuracy, later epoch on ties: normally the last, annealed one)",
    )
    p.add_argument("--out", default="runs/default", help="output directory")
    p.add_argument("--rnn", choices=["lstm", "gru", "rnn"], default="gru")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--attention", choices=["additive", "none"], default="additive")
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--stride", default="auto", help="time reduction before the RNN: an int, or 'auto' (<=128 steps)")
    p.add_argument(
        "--conv-channels",
        default="128,256,128",
        help="widths of the convolutional branch beside the RNN, comma-separated; 'none' for no branch",
    )
    p.add_argument("--conv-kernels", default="7,5,3", help="odd kernel sizes, one per conv channel entry")
    p.add_argument(
        "--kernel-features",
        type=int,
        default=4000,
        help="features of the fixed random-kernel (MiniRocket) branch beside the RNN; 0 for no branch",
    )
    p.add_argument(
        "--normalisation",
        choices=["auto", "global", "series"],
        default="auto",
        help="global: training mean/std per channel; series: each sequence z-normalised on its own "
        "steps; auto: series if the training sequences already are, else global",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=200,
        help="epochs of the schedule (early stopping by --patience may end it sooner)",
    )
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping")
    p.add_argument("--batch-size", type=int, default=0, help="0: auto, n_train // 10 clamped to 8..32")
    p.add_argument("--noise", type=float, default=0.0, help="Gaussian input noise (in std units) while training")
    p.add_argument(
        "--mixup",
        type=float,
        default=0.4,
        help="mixup alpha: train on convex mixes of equal-length sequences and their labels (0: off); used only "
        "when the whole schedule fits an opt-in --time-budget (it regularises, but slows fitting)",
    )
    p.add_argument(
        "--mixup-until",
        type=float,
        default=0.9,
        help="fraction of the planned epochs that use mixup; the rest fit the clean sequences",
    )
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--init-from", default="", help="checkpoint.pt to fine-tune from (same architecture)")
    p.add_argument("--freeze-front", action="store_true", help="train only the RNN, attention and head")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--patience", type=int, default=50, help="epochs without reaching best val accuracy again")
    p.add_argument(
        "--time-budget",
        type=float,
        default=0.0,
        help="opt-in wall-clock cap in seconds (0: none): the schedule is re-planned each epoch to end within it",
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--device", default="auto", help="auto (CUDA when it works), cpu or cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no per-epoch lines")


@torch.no_grad()
def predict(
    model: nn.Module,
    ds: data.Dataset,
    class_index: dict[str, int],
    batch_size: int = 32,
    offset: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Return (predicted class ids, true class ids, mean cross-entropy); ``offset`` [N, classes] (in ``ds``
    order) is added to the model's logits (the frozen kernel branch's, computed once)."""
    model.eval()
    device = next(model.parameters()).device
    order = np.argsort(ds.lengths, kind="stable")
    preds, trues, loss = [], [], 0.0
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        x, lengths, y = to_tensors(ds, idx, class_index)
        logits, _ = model(x.to(device), lengths.to(device))
        logits = logits.cpu()
        if offset is not None:
            logits = logits + offset[idx]
        loss += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        preds.append(logits.argmax(1).numpy())
        trues.append(y.numpy())
    return np.concatenate(preds), np.concatenate(trues), loss / len(ds)


def macro_f1(pred: np.ndarray, true: np.ndarray, num_classes: int) -> float:
    f1s = []
    for c in range(num_classes):
        tp = np.sum((pred == c) & (true == c))
        fp = np.sum((pred == c) & (true != c))
        fn = np.sum((pred != c) & (true == c))
        if tp + fp + fn == 0:
            continue
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s))


def mixup(
    x: torch.Tensor, y: torch.Tensor, lengths: torch.Tensor, alpha: float, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mixup (Zhang et al. 2018): mix each sequence with a shuffled batch-mate of the same length.

    Returns (mixed x, partner labels, lam); the loss is ``lam * CE(y) + (1 - lam) * CE(partner)``. Sequences of
    different lengths are not mixed (their partner is themselves): a mix would put one series' values into the
    other's padding. ``lam >= 0.5`` keeps the sequence's own label the majority one."""
    lam = float(rng.beta(alpha, alpha))
    lam = max(lam, 1.0 - lam)
    perm = torch.from_numpy(rng.permutation(len(y))).to(y.device)
    same = lengths.to(y.device)[perm] == lengths.to(y.device)
    partner = torch.where(same, perm, torch.arange(len(y), device=y.device))
    return lam * x + (1.0 - lam) * x[partner], y[partner], lam


def model_config(
    args: argparse.Namespace,
    feature_dim: int,
    num_classes: int,
    longest: int,
    normalisation: str,
    kernel_length: int,
    kernel_seed: int,
) -> ModelConfig:
    """The classifier the training CLI's architecture flags describe (``add_train_args``), for data of this
    shape: ``longest`` sets an ``auto`` stride; the kernel span and seed count only with ``--kernel-features``."""
    stride = auto_stride(longest) if str(args.stride) == "auto" else int(args.stride)
    conv = [] if args.conv_channels in ("", "none") else [int(c) for c in str(args.conv_channels).split(",")]
    return ModelConfig(
        feature_dim=feature_dim,
        num_classes=num_classes,
        rnn=args.rnn,
        hidden=args.hidden,
        layers=args.layers,
        bidirectional=args.bidirectional,
        attention=args.attention,
        dropout=args.dropout,
        stride=stride,
        conv_channels=conv,
        conv_kernels=[int(k) for k in str(args.conv_kernels).split(",")][: len(conv)],
        normalisation=normalisation,
        kernel_features=args.kernel_features,
        kernel_length=kernel_length if args.kernel_features else 0,
        kernel_seed=kernel_seed if args.kernel_features else 0,
    )


def train(args: argparse.Namespace) -> dict:
    """Run one training; return the metrics dict (also written to ``--out/metrics.json``)."""
    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    seed_everything(args.seed)
    full = data.load(args.train)
    test = data.load(args.test)
    classes = full.classes
    if set(test.labels) - set(classes):
        raise data.DataError(f"{args.test}: labels not in training set: {sorted(set(test.labels) - set(classes))}")
    if test.feature_dim != full.feature_dim:
        raise data.DataError(f"{args.test}: {test.feature_dim} features, training set has {full.feature_dim}")
    class_index = {c: i for i, c in enumerate(classes)}
    val_fraction = (0.15 if len(full) >= 300 else 0.0) if args.val_fraction == "auto" else float(args.val_fraction)
    train_ds, val_ds = data.split(full, val_fraction, args.seed)
    batch_size = args.batch_size or min(32, max(8, len(train_ds) // 10))
    selected_on = "validation" if len(val_ds) else "training"
    if len(val_ds) == 0:
        val_ds = train_ds  # --val-fraction 0: select on the training split (noted in metrics)
    mean, std = data.normalisation(train_ds)
    normalisation = args.normalisation
    if normalisation == "auto":
        normalisation = "series" if data.is_series_normalised(train_ds) else "global"
    max_length = int(max(full.lengths.max(), test.lengths.max()))

    warm = torch.load(args.init_from, map_location="cpu", weights_only=True) if getattr(args, "init_from", "") else None
    warm_cfg = ModelConfig(**warm["model_config"]) if warm else None  # (older configs lack newer fields)
    longest = int(full.lengths.max())
    cfg = model_config(
        args,
        full.feature_dim,
        len(classes),
        longest,
        normalisation,
        # The kernel branch is fixed, not learnt: a warm start keeps the checkpoint's (dilations spanning the data
        # it was fitted on, channel subsets from its seed); a fresh run spans its own longest sequence.
        kernel_length=warm_cfg.kernel_length if warm_cfg else longest,
        kernel_seed=warm_cfg.kernel_seed if warm_cfg else args.seed,
    )
    model = SequenceClassifier(cfg)
    if warm is not None:  # warm start (retraining); this data's statistics replace the old ones
        if warm_cfg.to_dict() != cfg.to_dict():
            raise ArchitectureChanged(f"{args.init_from}: another architecture than this run's; cannot fine-tune")
        model.load_state_dict(warm["state_dict"])
    if getattr(args, "freeze_front", False):  # the layers before the RNN keep their (warm-started) weights
        for name, param in model.named_parameters():
            param.requires_grad_(name.split(".")[0] in BACK_END)
    model.mean.copy_(torch.from_numpy(mean))
    model.std.copy_(torch.from_numpy(std))
    kernel_fit = {}
    if model.kernels is not None:
        kernel_fit = fit_kernel_branch(model, train_ds, class_index, args.seed, warm is None)
    val_offset = None
    if kernel_fit.get("kernel_head") == "ridge":  # fixed from here on: its validation logits once, not per epoch
        val_offset = kernel_branch_logits(model, val_ds)
        model.use_kernel_branch = False
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    rng = np.random.default_rng(args.seed)
    # Input noise in normalised units: per-channel training std (global), or 1 (each series has std 1).
    noise_scale = torch.from_numpy(std if normalisation == "global" else np.ones_like(std)).to(device)
    show = not args.quiet
    bar_cls = progress_bar() if show else None

    history: list[dict] = []
    best = {"val_accuracy": -1.0, "state": None, "epoch": 0}
    since_best = 0
    train_lengths = train_ds.lengths
    warmup = min(10, max(1, args.epochs // 20))
    budget = args.time_budget if args.time_budget and args.time_budget > 0 else None
    planned = args.epochs  # with a budget: re-planned every epoch from the measured epoch time
    use_mixup = args.mixup > 0  # with a budget: decided after the first epoch (see there)
    stopped_by = "epochs"
    t_loop = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        for group in opt.param_groups:
            group["lr"] = args.lr * lr_factor(epoch, planned, warmup)
        model.train()
        if getattr(args, "freeze_front", False):
            model.bns.eval()  # frozen front end: its batch-norm statistics stay the warm start's too
        t0 = time.perf_counter()
        batches = length_batches(train_lengths, batch_size, rng)
        bar = bar_cls(total=len(batches), desc=f"epoch {epoch}", leave=False) if bar_cls else None
        tot_loss, tot_n = 0.0, 0
        for idx in batches:
            x, lengths, y = to_tensors(train_ds, idx, class_index)
            x, y = x.to(device), y.to(device)
            if args.noise > 0:
                x = x + torch.randn_like(x) * noise_scale * args.noise
            y2, lam = y, 1.0
            if use_mixup and epoch <= args.mixup_until * planned:
                x, y2, lam = mixup(x, y, lengths, args.mixup, rng)
            logits, _ = model(x, lengths.to(device))
            loss = torch.zeros((), device=device)
            for out in (logits, *model.branch_logits):  # each branch must also classify on its own
                for target, weight in ((y, lam), (y2, 1.0 - lam)):
                    if weight > 0:
                        ce = nn.functional.cross_entropy(out, target, label_smoothing=args.label_smoothing)
                        loss = loss + weight * ce
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            opt.step()
            tot_loss += loss.item() * len(idx)
            tot_n += len(idx)
            if bar:
                bar.update(1)
        if bar:
            bar.close()
        vp, vt, vloss = predict(model, val_ds, class_index, offset=val_offset)
        vacc = float(np.mean(vp == vt))
        left = budget - (time.perf_counter() - t_start) if budget else float("inf")
        loop_seconds = time.perf_counter() - t_loop
        epoch_seconds = loop_seconds / epoch  # the mean so far
        if budget:
            planned = plan_epochs(epoch, loop_seconds, left, args.epochs)
        if budget and epoch == 1:
            # Mixup trades fitting speed for generalisation: only with epochs to spare, i.e. when the budget
            # holds the whole schedule at the first epoch's pace (ACSF1, budget-bound: 0.90 -> 0.85 with it).
            use_mixup = args.mixup > 0 and planned >= args.epochs
        history.append(
            {
                "epoch": epoch,
                "train_loss": tot_loss / tot_n,
                "val_loss": vloss,
                "val_accuracy": vacc,
                "lr": opt.param_groups[0]["lr"],
                "seconds": time.perf_counter() - t0,
            }
        )
        if show:
            acc_name = "val" if selected_on == "validation" else "train"  # no validation split: say so
            print(
                f"epoch {epoch:3d}/{planned}  train_loss {tot_loss / tot_n:.4f}  {acc_name}_loss {vloss:.4f}  "
                f"{acc_name}_acc {vacc:.4f}  {time.perf_counter() - t0:.1f}s",
                file=sys.stderr,
            )
        # Keep the best validation accuracy; on a tie the later, more annealed epoch. Reaching the best again
        # resets patience, so a plateau at the top does not stop training before the schedule has annealed.
        if vacc >= best["val_accuracy"]:
            best = {
                "val_accuracy": vacc,
                "state": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
                "epoch": epoch,
            }
            since_best = 0
        else:
            since_best += 1
        if since_best >= args.patience:
            stopped_by = "patience"
            break
        if epoch < args.epochs and left < epoch_seconds:  # another epoch would end past the budget: stop within it
            stopped_by = "time_budget"
            print(
                f"time budget {budget:.0f}s cut the run short after epoch {epoch} of {args.epochs} "
                "(the result depends on this machine's speed; drop --time-budget for the full schedule)",
                file=sys.stderr,
            )
            break

    model.to("cpu")
    model.load_state_dict(best["state"])
    model.use_kernel_branch = True
    vp, vt, _ = predict(model, val_ds, class_index)
    if kernel_fit.get("kernel_head") == "ridge" and val_ds is not train_ds and len(full) <= RIDGE_MAX_SEQUENCES:
        # The validation split has chosen the network's epoch; the closed-form head needs none of it (its penalty
        # and temperature come from leave-one-out), so it is fitted again on every training sequence.
        kernel_fit = fit_kernel_branch(model, full, class_index, args.seed, fit_biases=False)
    train_seconds = time.perf_counter() - t_start
    tp, tt, tloss = predict(model, test, class_index)
    metrics = {
        "test_accuracy": float(np.mean(tp == tt)),
        "test_macro_f1": macro_f1(tp, tt, len(classes)),
        "test_loss": tloss,
        "val_accuracy": float(np.mean(vp == vt)),
        "best_epoch": best["epoch"],
        "epochs": len(history),
        "train_seconds": round(train_seconds, 2),
        "n_train": len(train_ds),
        "n_val": len(val_ds),
        "n_test": len(test),
        "selected_on": selected_on,
        "stopped_by": stopped_by,
        "time_budget": budget,
        "time_budget_cut": stopped_by == "time_budget",
        "device": device.type,
        "batch_size": batch_size,
        "normalisation": normalisation,
        "mixup": use_mixup,
        **kernel_fit,
        "history": history,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_config = {
        "model_config": cfg.to_dict(),
        "classes": classes,
        "max_length": max_length,
        "length_range": [int(full.lengths.min()), int(full.lengths.max())],
        "normalisation": {"mean": mean.tolist(), "std": std.tolist()},
        "train_path": str(args.train),
        "test_path": str(args.test),
        "args": {k: v for k, v in vars(args).items() if k != "func"},
    }
    torch.save({"state_dict": model.state_dict(), **run_config}, out / "checkpoint.pt")
    (out / "config.json").write_text(json.dumps(run_config, indent=2))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    loss = {"train": [h["train_loss"] for h in history], "validation": [h["val_loss"] for h in history]}
    accuracy = {"": [h["val_accuracy"] for h in history]}
    panels = [("loss", "cross-entropy", loss), ("validation accuracy", "accuracy", accuracy)]
    plot_curves(out / "learning_curves.png", "epoch", [h["epoch"] for h in history], panels)
    if show:
        print(
            f"test_accuracy {metrics['test_accuracy']:.4f}  test_macro_f1 {metrics['test_macro_f1']:.4f}  "
            f"best_epoch {best['epoch']}  {train_seconds:.1f}s  -> {out}",
            file=sys.stderr,
        )
    return metrics
