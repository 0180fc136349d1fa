"""Fixed random convolutional kernels: the MiniRocket front end (Dempster, Schmidt and Webb 2021), made exact
under padding.

* **kernels**: the 84 length-9 kernels whose weights are -1 except for three positions at 2 (every choice of 3
  of 9); they sum to zero, so a constant offset does not change their output;
* **dilations**: up to 32 values spread exponentially from 1 to ``(length - 1) / 8`` (the receptive field
  spans the longest training sequence), each kernel seen at every dilation;
* **channels**: with several input channels, each (kernel, dilation) sums its convolution over a random
  subset of 1..min(C, 9) channels (the multivariate variant), fixed by ``seed``;
* **biases**: for each (kernel, dilation), quantiles of that kernel's output on one random training sequence
  (low-discrepancy quantile levels), set once by :func:`fit_kernels`;
* **feature**: the proportion of a sequence's *real* steps where the convolution exceeds a bias (PPV).

Exact under padding: the input is zero beyond each length (the classifier's ``normalise`` does that), the
convolution uses zero "same" padding, so a real step sees the same values alone or batched with longer
sequences, and the proportion counts real steps only and divides by the real length. Nothing here is
trained; the classifier standardises the features (training-set statistics) and puts a linear head on them.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

KERNEL_LENGTH = 9
NUM_KERNELS = 84  # C(9, 3)
MAX_DILATIONS = 32
GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def dilation_plan(length: int, num_features: int) -> list[tuple[int, int]]:
    """[(dilation, biases per kernel)] for sequences up to ``length`` steps and about ``num_features`` features."""
    per_kernel = max(1, num_features // NUM_KERNELS)
    n = min(per_kernel, MAX_DILATIONS)
    top = math.log2(max(1.0, (length - 1) / (KERNEL_LENGTH - 1)))
    dils, counts = np.unique(np.floor(2.0 ** np.linspace(0.0, top, n)).astype(int), return_counts=True)
    biases = (counts * (per_kernel / n)).astype(int)
    for i in range(per_kernel - int(biases.sum())):  # the remainder goes to the smallest dilations
        biases[i % len(biases)] += 1
    return [(int(d), int(b)) for d, b in zip(dils, biases) if b > 0]


class KernelFeatures(nn.Module):
    """x [B, T, C] (zero beyond each length), mask [B, T] -> PPV features [B, num_features]."""

    def __init__(self, channels: int, length: int, num_features: int, seed: int = 0) -> None:
        super().__init__()
        self.plan = dilation_plan(length, num_features)
        self.num_features = NUM_KERNELS * sum(b for _, b in self.plan)
        pattern = -torch.ones(NUM_KERNELS, KERNEL_LENGTH)
        for k, idx in enumerate(itertools.combinations(range(KERNEL_LENGTH), 3)):
            pattern[k, list(idx)] = 2.0
        g = torch.Generator().manual_seed(seed)
        for i, (_, nb) in enumerate(self.plan):
            select = torch.zeros(NUM_KERNELS, channels)
            top = math.log2(min(channels, KERNEL_LENGTH) + 1)
            for k in range(NUM_KERNELS):
                n = int(2.0 ** (torch.rand(1, generator=g).item() * top))
                chosen = torch.randperm(channels, generator=g)[: max(1, min(n, channels))]
                select[k, chosen] = 1.0
            self.register_buffer(f"weight{i}", pattern[:, None, :] * select[:, :, None])  # [K, C, 9]
            self.register_buffer(f"bias{i}", torch.zeros(NUM_KERNELS, nb))

    def convolve(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """The kernels at dilation plan[i]: [B, T, C] -> [B, K, T] ("same" zero padding)."""
        d = self.plan[i][0]
        w = getattr(self, f"weight{i}")
        return F.conv1d(x.transpose(1, 2), w, padding=(KERNEL_LENGTH // 2) * d, dilation=d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        padding = ~mask[:, None, :]  # [B, 1, T]
        feats = []
        for i in range(len(self.plan)):
            # Padded steps become -inf, which exceeds no bias: masked on [B, K, T], not on the [B, K, nb, T] compare.
            c = self.convolve(x, i).masked_fill(padding, float("-inf"))  # [B, K, T]
            b = getattr(self, f"bias{i}")  # [K, nb]
            feats.append((c.unsqueeze(2) > b[None, :, :, None]).to(x.dtype).sum(-1).flatten(1))
        return torch.cat(feats, dim=1) / lengths.to(x.dtype).unsqueeze(1)


@torch.no_grad()
def fit_kernels(kf: KernelFeatures, sequences: list[torch.Tensor], seed: int = 0) -> None:
    """Set every (kernel, dilation)'s biases from quantiles of its output on one random training sequence.

    ``sequences``: normalised training sequences, each [T_i, C] (real steps only)."""
    rng = np.random.default_rng(seed)
    q = 0
    for i, (_, nb) in enumerate(kf.plan):
        bias = getattr(kf, f"bias{i}")
        picks = rng.integers(0, len(sequences), NUM_KERNELS)
        for k in range(NUM_KERNELS):
            s = sequences[picks[k]]
            c = kf.convolve(s.unsqueeze(0), i)[0, k]  # [T_i]
            levels = torch.tensor([((q + j + 1) * GOLDEN) % 1.0 for j in range(nb)], dtype=c.dtype)
            bias[k] = torch.quantile(c, levels)
            q += nb


@torch.no_grad()
def fit_ridge(features: torch.Tensor, y: torch.Tensor, num_classes: int, alphas: tuple[float, ...] = ()) -> dict:
    """Closed-form ridge classifier on standardised features, as MiniRocket's (one-vs-rest targets of +-1).

    The penalty is chosen by exact leave-one-out error (computed from one eigendecomposition of the
    ``n x n`` Gram matrix); a temperature then turns the scores into logits by maximising the leave-one-out
    likelihood, so the branch's confidence is honest when its logits are added to the others'. Returns the
    linear layer's ``weight`` [classes, features] and ``bias``, and the chosen ``alpha`` and ``temperature``."""
    alphas = alphas or tuple(float(a) for a in np.logspace(-3, 3, 10))
    f = features.double()
    targets = -torch.ones(len(y), num_classes, dtype=torch.float64)
    targets[torch.arange(len(y)), y] = 1.0
    f_mean, t_mean = f.mean(0), targets.mean(0)
    a, t = f - f_mean, targets - t_mean
    s, u = torch.linalg.eigh(a @ a.T)
    s = s.clamp_min(0.0)
    ut = u.T @ t
    best = None
    for alpha in alphas:
        shrink = s / (s + alpha)
        fitted = u @ (shrink[:, None] * ut)
        leverage = (u**2) @ shrink
        loo = t - (t - fitted) / (1.0 - leverage).clamp_min(1e-9)[:, None]  # leave-one-out scores
        err = float(((t - loo) ** 2).sum())
        if best is None or err < best[0]:
            best = (err, alpha, loo)
    _, alpha, loo = best
    dual = u @ ((1.0 / (s + alpha))[:, None] * ut)
    weight = (a.T @ dual).T  # [classes, features]
    bias = t_mean - weight @ f_mean
    scores = loo + t_mean
    temps = np.logspace(-1, 3, 41)
    nll = [float(torch.nn.functional.cross_entropy(scores * tau, y)) for tau in temps]
    tau = float(temps[int(np.argmin(nll))])
    return {"weight": (weight * tau).float(), "bias": (bias * tau).float(), "alpha": alpha, "temperature": tau}
