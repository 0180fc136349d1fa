"""What every task's training loop shares: seeding, the device, length-sorted batches, the learning-rate
schedule, the time budget, the progress bar. The task's own loop is ``training/tasks/<task>/train.py``."""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training import data


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def length_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle, sort by length inside windows of 16 batches, cut into batches, shuffle batch order."""
    perm = rng.permutation(len(lengths))
    window = batch_size * 16
    chunks = [perm[i : i + window] for i in range(0, len(perm), window)]
    ordered = np.concatenate([c[np.argsort(lengths[c], kind="stable")] for c in chunks])
    batches = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    rng.shuffle(batches)
    return batches


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when a kernel really runs there, else CPU; ``cuda`` fails clearly without it."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {name!r}")
    if name == "cpu":
        return torch.device("cpu")
    why = "torch was built without CUDA or no GPU is visible"
    if torch.cuda.is_available():
        try:
            torch.zeros(1, device="cuda").add_(1).item()
            return torch.device("cuda")
        except RuntimeError as e:  # a driver/library mismatch shows up only when a kernel runs
            why = str(e).splitlines()[0]
    if name == "cuda":
        raise data.DataError(f"--device cuda: CUDA is not usable here ({why})")
    return torch.device("cpu")


def lr_factor(epoch: int, planned: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` epochs, then cosine decay to 1% at epoch ``planned``."""
    if epoch <= warmup:
        return epoch / (warmup + 1)
    progress = min(1.0, (epoch - warmup) / max(1, planned - warmup))
    return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress))


def plan_epochs(epoch: int, loop_seconds: float, seconds_left: float, max_epochs: int) -> int:
    """Epochs the schedule should span: as many as the mean epoch time so far fits into the time left."""
    return max(epoch + 1, min(max_epochs, epoch + int(seconds_left / (loop_seconds / epoch))))


def progress_bar() -> Callable[..., Any]:
    from tqdm import tqdm

    def bar(**kw):
        return tqdm(disable=None, file=sys.stderr, **kw)  # disable=None: only on a terminal

    return bar


def plot_curves(path: Path, xlabel: str, x: list[float], panels: list[tuple[str, str, dict[str, list[float]]]]) -> None:
    """Learning curves as one PNG: a panel per ``(title, y label, {line label: values})``, all against ``x``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels) + 1, 4), squeeze=False)
    for ax, (title, ylabel, lines) in zip(axes[0], panels):
        for label, values in lines.items():
            ax.plot(x, values, label=label or None)
        ax.set_xlabel(xlabel), ax.set_ylabel(ylabel), ax.set_title(title)
        if len(lines) > 1:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


class RunLog:
    """A run's ``log.txt``: ``log(line)`` writes each line there and prints it (to ``stream``, read at each call),
    flushed at once so a long run can be followed."""

    def __init__(self, path: Path, stream: str = "stderr") -> None:
        self.file, self.stream = path.open("w"), stream

    def __call__(self, line: str) -> None:
        print(line, file=getattr(sys, self.stream), flush=True)
        print(line, file=self.file, flush=True)

    def close(self) -> None:
        self.file.close()
