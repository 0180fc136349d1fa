"""Request mixes for load tests and benchmarks, built from the real JapaneseVowels test set.

* ``jv``: the test sequences as they are (lengths 7..29), shuffled.
* ``longtail``: the same sequences, but a tenth of them stretched 10-40x in time by linear resampling
  (lengths up to ~1160): most requests short, a few very long, as in production traffic.

Deterministic for a seed, so every system in a benchmark sees the same requests in the same order.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from training.data import load

ROOT = Path(__file__).resolve().parents[1]
JV_TEST = ROOT / "data/JapaneseVowels/JapaneseVowels_TEST.ts"
PROFILES = ("jv", "longtail")
LONGTAIL_FRACTION = 0.1
STRETCH = (10, 40)
LONGTAIL_MAX_LENGTH = 29 * STRETCH[1]


def stretch(seq: np.ndarray, factor: int) -> np.ndarray:
    """Resample ``seq`` [T, F] to ``T * factor`` steps by linear interpolation per channel."""
    T = len(seq)
    src = np.linspace(0.0, T - 1, T * factor)
    return np.stack([np.interp(src, np.arange(T), seq[:, f]) for f in range(seq.shape[1])], axis=1).astype(np.float32)


def sequences(profile: str, seed: int = 0, path: Path = JV_TEST) -> list[np.ndarray]:
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    rng = np.random.default_rng(seed)
    test_set = load(path).sequences
    seqs = [test_set[i] for i in rng.permutation(len(test_set))]
    if profile == "longtail":
        long = rng.random(len(seqs)) < LONGTAIL_FRACTION
        factors = rng.integers(STRETCH[0], STRETCH[1] + 1, size=len(seqs))
        seqs = [stretch(s, int(k)) if is_long else s for s, k, is_long in zip(seqs, factors, long)]
    return seqs


def json_body(seqs: list[np.ndarray]) -> bytes:
    """A /predict body for these sequences, numbers rounded to 6 decimals (the same text for every system)."""
    return json.dumps({"sequences": [np.round(s.astype(np.float64), 6).tolist() for s in seqs]}).encode()
