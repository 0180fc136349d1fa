"""The retrain's promotion gate (issue 29, item 6): a paired test, not a bare accuracy comparison."""

from __future__ import annotations

import numpy as np

from training.tasks.classify.gate import decide, mcnemar_p


def test_mcnemar_exact_values() -> None:
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(3, 1) == 5 / 16  # P(X >= 3), X ~ Bin(4, 1/2)
    assert mcnemar_p(10, 0) == 1 / 1024
    assert 0 < mcnemar_p(1300, 1200) < 0.03  # thousands of pairs: exact integers, no overflow


def pair(n: int, both: int, challenger_only: int, champion_only: int) -> tuple[np.ndarray, np.ndarray]:
    a, h = np.zeros(n, bool), np.zeros(n, bool)
    a[:both] = h[:both] = True
    h[both : both + challenger_only] = True
    a[both + challenger_only : both + challenger_only + champion_only] = True
    return a, h


def test_two_more_correct_of_324_is_noise() -> None:
    """The issue's case: with margin 0 the old gate promoted a challenger right on 2 more of 324."""
    champion, challenger = pair(324, 300, 3, 1)
    v = decide(champion, challenger, original=300, margin=0.0)
    assert not v["promote"] and v["rule"] == "paired test" and "p = 0.312" in v["reason"]


def test_gains_on_feedback_cannot_hide_a_loss_on_the_original_test_split() -> None:
    champion, challenger = pair(400, 300, 40, 0)  # far better overall ...
    champion[:300], challenger[:300] = True, True
    challenger[:5] = False  # ... but 5 of the 300 original test sequences lost
    v = decide(champion, challenger, original=300)
    assert not v["promote"] and v["rule"] == "no regression"
    assert v["original_test"]["challenger"] < v["original_test"]["champion"]
    ok = decide(champion, challenger, original=300, max_regression=0.02)
    assert ok["promote"] and ok["mcnemar"]["p_one_sided"] < 0.05


def test_margin_still_applies_first() -> None:
    champion, challenger = pair(200, 100, 30, 0)
    assert decide(champion, challenger, original=100, margin=1.0)["rule"] == "margin"
    assert decide(champion, challenger, original=100)["promote"]
