"""Random search: ``python -m training tune --train X --test Y --trials N --out DIR``.

Each trial is a full training run in ``DIR/trial_NNN``; trials are ranked on validation accuracy (then
validation loss), never on the test split. Writes ``DIR/leaderboard.csv`` and copies the winner to ``DIR/best``.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import sys
from pathlib import Path

from training.tasks.classify.train import add_train_args, train

SPACE = {
    "rnn": ["lstm", "gru"],
    "hidden": [64, 96, 128, 192],
    "layers": [1, 2, 3],
    "lr": [5e-4, 1e-3, 2e-3, 4e-3],
    "dropout": [0.0, 0.1, 0.2, 0.3],
}


def add_tune_args(p: argparse.ArgumentParser) -> None:
    add_train_args(p)
    p.set_defaults(out="runs/tune", quiet=True)
    p.add_argument("--trials", type=int, default=8)


def tune(args: argparse.Namespace) -> list[dict]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    rows = []
    for trial in range(args.trials):
        params = {k: rng.choice(v) for k, v in SPACE.items()}
        trial_args = argparse.Namespace(**{**vars(args), **params, "out": str(out / f"trial_{trial:03d}")})
        metrics = train(trial_args)
        last_val_loss = min(h["val_loss"] for h in metrics["history"])
        row = {
            "trial": trial,
            **params,
            "val_accuracy": metrics["val_accuracy"],
            "val_loss": last_val_loss,
            "test_accuracy": metrics["test_accuracy"],
            "epochs": metrics["epochs"],
            "train_seconds": metrics["train_seconds"],
            "run": trial_args.out,
        }
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "run"}), file=sys.stderr)
    rows.sort(key=lambda r: (-r["val_accuracy"], r["val_loss"]))
    with (out / "leaderboard.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    best = out / "best"
    if best.exists():
        shutil.rmtree(best)
    shutil.copytree(rows[0]["run"], best)
    print(f"best trial {rows[0]['trial']}: val_accuracy {rows[0]['val_accuracy']:.4f} -> {best}", file=sys.stderr)
    return rows
