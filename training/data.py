"""Read labelled variable-length multivariate sequences.

Two formats:

* UEA/UCR ``.ts``: ``#`` comments, ``@`` header lines, then ``@data``; each data line holds one
  comma-separated series per dimension, dimensions separated by ``:``, the label last.
* JSONL: one object per line, ``{"sequence": [[f, ...], ...], "label": "..."}`` (time-major).

Both return a :class:`Dataset`: a list of float32 arrays of shape ``[T_i, F]`` and string labels.
Malformed input raises :class:`DataError` naming the file and the line.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """A data file could not be read; the message names the file and line."""


@dataclass
class Dataset:
    sequences: list[np.ndarray]  # each float32 [T_i, F]
    labels: list[str]
    classes: list[str] = field(default_factory=list)  # declared class order, if the file gives one

    def __post_init__(self) -> None:
        if not self.classes:
            self.classes = sorted(set(self.labels), key=_natural_key)

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def feature_dim(self) -> int:
        return int(self.sequences[0].shape[1])

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(s) for s in self.sequences], dtype=np.int64)

    def subset(self, idx: np.ndarray | list[int]) -> Dataset:
        return Dataset([self.sequences[i] for i in idx], [self.labels[i] for i in idx], list(self.classes))


def _natural_key(label: str) -> tuple:
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def load(path: str | Path) -> Dataset:
    """Load a ``.ts`` or ``.jsonl`` file, chosen by suffix."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: file not found")
    if p.suffix == ".ts":
        return read_ts(p)
    if p.suffix in (".jsonl", ".json", ".ndjson"):
        return read_jsonl(p)
    raise DataError(f"{p}: unknown format (expected .ts or .jsonl)")


def _parse_float(token: str, where: str) -> float:
    token = token.strip()
    if token == "?":
        raise DataError(f"{where}: missing value '?' is not supported")
    try:
        value = float(token)
    except ValueError:
        raise DataError(f"{where}: not a number: {token[:40]!r}") from None
    if not math.isfinite(value):
        raise DataError(f"{where}: non-finite value {token!r}")
    return value


def read_ts(path: str | Path) -> Dataset:
    """Read a UEA/UCR ``.ts`` file with class labels (variable length allowed)."""
    p = Path(path)
    sequences: list[np.ndarray] = []
    labels: list[str] = []
    declared: list[str] = []
    dims: int | None = None
    in_data = False
    with p.open(encoding="utf-8", errors="replace") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.strip()
            where = f"{p}:{lineno}"
            if not line or line.startswith("#"):
                continue
            if not in_data:
                if not line.startswith("@"):
                    raise DataError(f"{where}: expected a '@' header line before @data")
                key, _, value = line[1:].partition(" ")
                key = key.lower()
                if key == "data":
                    in_data = True
                elif key == "dimensions":
                    dims = int(value)
                elif key == "classlabel":
                    parts = value.split()
                    if not parts or parts[0].lower() != "true":
                        raise DataError(f"{where}: only labelled classification files are supported")
                    declared = parts[1:]
                elif key == "timestamps" and value.strip().lower() == "true":
                    raise DataError(f"{where}: @timeStamps true is not supported")
                continue
            fields = line.split(":")
            if len(fields) < 2:
                raise DataError(f"{where}: expected dimensions separated by ':' and a label")
            label = fields[-1].strip()
            channels = fields[:-1]
            if dims is not None and len(channels) != dims:
                raise DataError(f"{where}: {len(channels)} dimensions, header says {dims}")
            series = [[_parse_float(t, f"{where} dim {d}") for t in ch.split(",")] for d, ch in enumerate(channels)]
            length = len(series[0])
            if any(len(s) != length for s in series):
                raise DataError(f"{where}: dimensions have different lengths {[len(s) for s in series]}")
            if declared and label not in declared:
                raise DataError(f"{where}: label {label!r} not in @classLabel {declared}")
            sequences.append(np.asarray(series, dtype=np.float32).T.copy())
            labels.append(label)
    if not in_data:
        raise DataError(f"{p}: no @data section")
    return _finish(p, sequences, labels, declared)


def read_jsonl(path: str | Path) -> Dataset:
    """Read ``{"sequence": [[f, ...], ...], "label": "..."}`` per line."""
    p = Path(path)
    sequences: list[np.ndarray] = []
    labels: list[str] = []
    with p.open(encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            where = f"{p}:{lineno}"
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict) or "sequence" not in obj or "label" not in obj:
                raise DataError(f"{where}: expected an object with 'sequence' and 'label'")
            seq = obj["sequence"]
            if not isinstance(seq, list) or not seq or not all(isinstance(s, list) for s in seq):
                raise DataError(f"{where}: 'sequence' must be a non-empty list of time steps (lists of numbers)")
            width = len(seq[0])
            if width == 0 or any(len(s) != width for s in seq):
                raise DataError(f"{where}: every time step must have the same, non-zero number of features")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for s in seq for v in s):
                raise DataError(f"{where}: 'sequence' contains a non-number")
            arr = np.asarray(seq, dtype=np.float32)
            if not np.isfinite(arr).all():
                raise DataError(f"{where}: 'sequence' contains a non-finite value")
            sequences.append(arr)
            labels.append(str(obj["label"]))
    return _finish(p, sequences, labels, [])


def _finish(p: Path, sequences: list[np.ndarray], labels: list[str], declared: list[str]) -> Dataset:
    if not sequences:
        raise DataError(f"{p}: no sequences")
    widths = {s.shape[1] for s in sequences}
    if len(widths) != 1:
        raise DataError(f"{p}: sequences have different feature counts {sorted(widths)}")
    return Dataset(sequences, labels, declared)


def normalisation(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std over every time step of the (training) split."""
    allsteps = np.concatenate(ds.sequences, axis=0).astype(np.float64)
    mean = allsteps.mean(axis=0)
    std = allsteps.std(axis=0)
    std[std < 1e-8] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def is_series_normalised(ds: Dataset, tol: float = 0.05) -> bool:
    """True when (nearly) every sequence with 3+ steps is already z-normalised per channel (mean 0, std 1 on its
    own steps), as most UCR archive sets are: then serving applies the same per-series normalisation."""
    seqs = [s for s in ds.sequences if len(s) >= 3]
    if not seqs:
        return False
    ok = 0
    for s in seqs:
        # population or sample std (the archive uses the latter; on 10 steps they differ by 5%)
        sd0, sd1 = s.std(axis=0), s.std(axis=0, ddof=1)
        live = sd0 > 1e-8  # constant channels cannot be normalised; they do not count against it
        unit = np.minimum(np.abs(sd0 - 1.0), np.abs(sd1 - 1.0))[live]
        ok += bool(np.all(np.abs(s.mean(axis=0)) < tol) and np.all(unit < tol))
    return ok >= 0.95 * len(seqs)


def split(ds: Dataset, val_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Stratified train/validation split."""
    rng = np.random.default_rng(seed)
    labels = np.array(ds.labels)
    val_idx: list[int] = []
    for c in ds.classes:
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * val_fraction))
        if 0 < val_fraction and n_val == 0 and len(idx) > 1:
            n_val = 1
        val_idx.extend(idx[:n_val].tolist())
    val_set = set(val_idx)
    train_idx = [i for i in range(len(ds)) if i not in val_set]
    return ds.subset(train_idx), ds.subset(sorted(val_idx))


def pad(sequences: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad to ``[B, T_max, F]``; return the batch and the int64 lengths."""
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    out = np.zeros((len(sequences), int(lengths.max()), sequences[0].shape[1]), dtype=np.float32)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = s
    return out, lengths


# --- text, for the language models (training/tasks/generate/train.py) ----------------------------------------

UNK, BOS, EOS = "<unk>", "<bos>", "<eos>"


@dataclass
class Text:
    """A character corpus as token ids: ``vocab[i]`` is token i's text; specials come first."""

    ids: np.ndarray  # int64 [N], the whole corpus in order
    vocab: list[str]
    documents: str  # "none": one running text; "lines": one document a line, each <bos> ... <eos>

    @property
    def specials(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.vocab) if s in (UNK, BOS, EOS)}


def read_text(path: str | Path, documents: str = "none") -> Text:
    """A UTF-8 text file as character ids. The vocabulary is every character of the file (sorted), after
    ``<unk>`` (and ``<bos>``/``<eos>`` with ``documents="lines"``, where each non-empty line is a document)."""
    p = Path(path)
    if documents not in ("none", "lines"):
        raise DataError(f"--documents must be 'none' or 'lines', got {documents!r}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{p}: cannot read as UTF-8 text ({e})") from e
    if documents == "lines":
        lines = [line for line in text.splitlines() if line.strip()]
        chars = sorted(set("".join(lines)))
        vocab = [UNK, BOS, EOS, *chars]
    else:
        chars = sorted(set(text))
        vocab = [UNK, *chars]
    if len(chars) < 2 or len(text) < 100:
        raise DataError(f"{p}: {len(text)} characters, {len(chars)} distinct: too little text to model")
    index = {c: i for i, c in enumerate(vocab)}
    if documents == "lines":
        bos, eos = index[BOS], index[EOS]
        ids = [t for line in lines for t in (bos, *(index[c] for c in line), eos)]
    else:
        ids = [index[c] for c in text]
    return Text(np.asarray(ids, dtype=np.int64), vocab, documents)
