"""Request mixes for load tests and benchmarks: real sequences, shaped to fit the served model.

Where the sequences come from (``source``):

* a data file of the user's (``DATA=file.ts`` or ``.jsonl`` for ``make loadtest``/``make bench``);
* else, when the served model takes JapaneseVowels' 12 features, the bundled JapaneseVowels test set;
* else sequences generated from the model's ``/metadata``: its feature count, lengths drawn from its training
  length range, values from its training mean and std, so every request fits the model.

Profiles:

* ``jv``: the sequences as they are, shuffled.
* ``longtail``: the same, but a tenth of them stretched 10-40x in time by linear resampling (most requests
  short, a few very long, as in production traffic).

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


JV_FEATURES = 12


def synthetic(meta: dict, n: int = 370, seed: int = 0) -> list[np.ndarray]:
    """Sequences that fit a model's /metadata: its features, its training lengths, its training statistics."""
    rng = np.random.default_rng(seed)
    low, high = meta.get("training_length_range") or (1, min(int(meta["max_length"]), 64))
    high = min(int(high), int(meta["max_length"]))
    norm = meta.get("normalisation") if isinstance(meta.get("normalisation"), dict) else {}
    F = int(meta["feature_dim"])
    mean = np.asarray(norm.get("mean", np.zeros(F)), np.float32)
    std = np.asarray(norm.get("std", np.ones(F)), np.float32)
    lengths = rng.integers(int(low), high + 1, size=n)
    return [(rng.standard_normal((int(T), F)) * std + mean).astype(np.float32) for T in lengths]


def source(meta: dict | None = None, data: str | Path | None = None) -> tuple[str, list[np.ndarray]]:
    """(description, sequences) to build a load from: ``data`` if given, else JV or ``synthetic(meta)``."""
    if data:
        seqs = load(data).sequences
        if meta and seqs and seqs[0].shape[1] != int(meta["feature_dim"]):
            raise ValueError(f"{data}: {seqs[0].shape[1]} features, the served model expects {meta['feature_dim']}")
        return str(data), seqs
    if meta is None or int(meta["feature_dim"]) == JV_FEATURES:
        return "JapaneseVowels test set", load(JV_TEST).sequences
    return f"generated from the model's metadata ({meta['feature_dim']} features)", synthetic(meta)


def sequences(
    profile: str, seed: int = 0, meta: dict | None = None, data: str | Path | None = None
) -> list[np.ndarray]:
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    rng = np.random.default_rng(seed)
    _, base = source(meta, data)
    seqs = [base[i] for i in rng.permutation(len(base))]
    if profile == "longtail":
        long = rng.random(len(seqs)) < LONGTAIL_FRACTION
        factors = rng.integers(STRETCH[0], STRETCH[1] + 1, size=len(seqs))
        seqs = [stretch(s, int(k)) if is_long else s for s, k, is_long in zip(seqs, factors, long)]
    return seqs


def json_body(seqs: list[np.ndarray]) -> bytes:
    """A /predict body for these sequences, numbers rounded to 6 decimals (the same text for every system)."""
    return json.dumps({"sequences": [np.round(s.astype(np.float64), 6).tolist() for s in seqs]}).encode()
