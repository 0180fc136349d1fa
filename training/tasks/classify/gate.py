"""The promotion gate of a retrain (issue 29): a challenger replaces the champion only when it is better beyond
chance on the same holdout, and no worse than a tolerance on the original test split.

Both models answer every holdout sequence (through ONNX Runtime, as served), so the comparison is paired: what
matters is the sequences on which they disagree about being right. ``b``: the challenger right, the champion
wrong; ``c``: the reverse. Under "no difference" each such sequence is a fair coin, so McNemar's exact test
gives the one-sided p-value ``P(X >= b)``, ``X ~ Binomial(b + c, 1/2)``. Two more correct of 324 (b=3, c=1)
is p = 0.31: noise, rejected. The rules, in order; the first that fails decides, and the report names it:

1. ``margin``: holdout accuracy >= the champion's + ``--margin``;
2. ``paired test``: McNemar's one-sided p < ``--alpha`` (0.05);
3. ``no regression``: accuracy on the original test split (the first part of the holdout) >= the champion's
   - ``--max-regression`` (0.005), so that gains on feedback cannot hide losses on the data the model was
   built for.
"""

from __future__ import annotations

from math import comb

import numpy as np

ALPHA = 0.05
MAX_REGRESSION = 0.005


def mcnemar_p(b: int, c: int) -> float:
    """One-sided exact McNemar p-value that the challenger (right on ``b`` discordant pairs, the champion on
    ``c``) is better: ``P(X >= b)`` for ``X ~ Binomial(b + c, 1/2)``; 1.0 with no discordant pair."""
    n = b + c
    if n == 0:
        return 1.0
    return sum(comb(n, k) for k in range(b, n + 1)) / 2**n  # exact integers; int / int never overflows


def decide(
    champion_right: np.ndarray,
    challenger_right: np.ndarray,
    original: int,
    margin: float = 0.0,
    alpha: float = ALPHA,
    max_regression: float = MAX_REGRESSION,
) -> dict:
    """The gate on per-sequence correctness (bool arrays over the holdout; its first ``original`` sequences are
    the original test split). Returns ``promote``, the deciding ``rule``, a ``reason`` and the figures."""
    a, h = np.asarray(champion_right, bool), np.asarray(challenger_right, bool)
    if a.shape != h.shape or a.ndim != 1 or not 0 <= original <= len(a):
        raise ValueError(f"gate: correctness arrays of {a.shape} and {h.shape}, original part {original}")
    b, c = int(np.sum(h & ~a)), int(np.sum(a & ~h))
    p = mcnemar_p(b, c)
    acc = {"champion": float(a.mean()) if len(a) else 0.0, "challenger": float(h.mean()) if len(h) else 0.0}
    orig = {
        "sequences": original,
        "champion": float(a[:original].mean()) if original else None,
        "challenger": float(h[:original].mean()) if original else None,
    }
    figures = {
        "holdout": {"sequences": len(a), **acc},
        "mcnemar": {"challenger_only_right": b, "champion_only_right": c, "p_one_sided": p, "alpha": alpha},
        "original_test": {**orig, "max_regression": max_regression},
        "margin": margin,
    }
    if acc["challenger"] < acc["champion"] + margin:
        return {"promote": False, "rule": "margin", **figures,
                "reason": f"challenger not better than the champion by the margin ({acc['challenger']:.4f} vs "
                          f"{acc['champion']:.4f} + {margin})"}  # fmt: skip
    if p >= alpha:
        return {"promote": False, "rule": "paired test", **figures,
                "reason": f"not better beyond chance: right where the champion was wrong on {b}, the reverse on "
                          f"{c} (McNemar one-sided p = {p:.3g} >= {alpha})"}  # fmt: skip
    if original and orig["challenger"] < orig["champion"] - max_regression:
        return {"promote": False, "rule": "no regression", **figures,
                "reason": f"worse on the original test split: {orig['challenger']:.4f} vs {orig['champion']:.4f} "
                          f"(tolerance {max_regression})"}  # fmt: skip
    return {"promote": True, "rule": "paired test and no regression", **figures,
            "reason": f"better beyond chance (p = {p:.3g}) and no regression on the original test split"}  # fmt: skip
