"""Input drift: a sliding window of recent inputs compared with the training statistics in the artifact.

The artifact carries the per-feature mean and standard deviation of the training split (``normalisation`` in
metadata.json). The monitor keeps the most recent ``window_steps`` time steps of served sequences (per
worker, whole sequences, oldest evicted first) and computes, per feature f,

    z_f = |mean of the window_f - training mean_f| / training std_f

The drift score is the mean of z_f over features: 0 for inputs like the training data. With a window of
a few thousand steps it is about 0.1 on held-out data. 1 means the inputs moved by one training standard
deviation on average. It is cheap (one sum per sequence), bounded in memory, and needs no stored data.
"""

from __future__ import annotations

from collections import deque

import numpy as np


class DriftMonitor:
    def __init__(self, mean: list[float], std: list[float], window_steps: int = 4096, min_steps: int = 256) -> None:
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.maximum(np.asarray(std, dtype=np.float64), 1e-8)
        self.window_steps = window_steps
        self.min_steps = min_steps
        self._window: deque[tuple[np.ndarray, int]] = deque()  # (per-feature sum, steps) per sequence
        self._sum = np.zeros_like(self.mean)
        self._steps = 0

    def update(self, seqs: list[np.ndarray]) -> None:
        for s in seqs:
            total = s.sum(axis=0, dtype=np.float64)
            self._window.append((total, len(s)))
            self._sum += total
            self._steps += len(s)
        while self._steps - self._window[0][1] >= self.window_steps:  # keep at least window_steps
            total, n = self._window.popleft()
            self._sum -= total
            self._steps -= n

    @property
    def steps(self) -> int:
        return self._steps

    def feature_shift(self) -> np.ndarray:
        """Per-feature |window mean - training mean| / training std (NaN until ``min_steps`` were seen)."""
        if self._steps < self.min_steps:
            return np.full_like(self.mean, np.nan)
        return np.abs(self._sum / self._steps - self.mean) / self.std

    def score(self) -> float:
        return float(self.feature_shift().mean())
