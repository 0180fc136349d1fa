"""The in-process inference engine: the same batching code the HTTP service runs, without HTTP.

``Engine.infer`` takes a merged batch of variable-length sequences (from any number of requests), sorts it
by length, cuts it into sub-batches (``service.padding.plan_batches``), pads each into a reused buffer, runs
ONNX Runtime, and returns results in the order the sequences came in.

Settings come from the environment (documented in README "Configuration"):

=================================  =======  =====================================================
``SEQSERVE_DEVICE``                auto     auto | cpu | cuda
``SEQSERVE_WORKERS``               2        BentoML worker processes (2 x 1 thread measured best on 2 cores)
``SEQSERVE_ORT_THREADS``           0        ORT intra-op threads per worker (0: cores / workers)
``SEQSERVE_STEP_BUDGET``           8192     max ``B x T_max`` of one model call
``SEQSERVE_MAX_SUB_BATCH``         128      max sequences in one model call
``SEQSERVE_MIN_PADDING_EFFICIENCY`` 0.85    split a sub-batch before its real/padded steps drop below
``SEQSERVE_MAX_LENGTH``            0        longest accepted sequence (0: the artifact's max_length)
=================================  =======  =====================================================
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from service.padding import PadBuffer, plan_batches
from service.runtime import Artifact, find_artifact, open_session

DEFAULT_WORKERS = 2


def env_int(name: str, default: int) -> int:
    """An integer setting; a bad value is an error that names the variable."""
    raw = os.environ.get(name)
    try:
        return default if raw is None or raw.strip() == "" else int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected an integer") from None


def env_float(name: str, default: float) -> float:
    """A number setting; a bad value is an error that names the variable."""
    raw = os.environ.get(name)
    try:
        return default if raw is None or raw.strip() == "" else float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected a number") from None


@dataclass
class Settings:
    device: str = field(default_factory=lambda: os.environ.get("SEQSERVE_DEVICE", "auto"))
    ort_threads: int = field(default_factory=lambda: env_int("SEQSERVE_ORT_THREADS", 0))
    step_budget: int = field(default_factory=lambda: env_int("SEQSERVE_STEP_BUDGET", 8192))
    max_sub_batch: int = field(default_factory=lambda: env_int("SEQSERVE_MAX_SUB_BATCH", 128))
    min_efficiency: float = field(default_factory=lambda: env_float("SEQSERVE_MIN_PADDING_EFFICIENCY", 0.85))
    max_length: int = field(default_factory=lambda: env_int("SEQSERVE_MAX_LENGTH", 0))

    def accepted_max_length(self, meta: dict) -> int:
        """The longest sequence served: SEQSERVE_MAX_LENGTH when set (> 0), else the artifact's max_length."""
        if self.max_length < 0:
            raise ValueError(f"SEQSERVE_MAX_LENGTH={self.max_length}: must be >= 1 (or 0 for the artifact's)")
        return self.max_length or int(meta["max_length"])


@dataclass
class BatchStats:
    sequences: int = 0
    real_steps: int = 0
    padded_steps: int = 0
    call_sizes: list[int] = field(default_factory=list)  # sequences per model call
    call_seconds: list[float] = field(default_factory=list)  # wall time per model call

    @property
    def model_calls(self) -> int:
        return len(self.call_sizes)

    @property
    def padding_efficiency(self) -> float:
        return self.real_steps / self.padded_steps if self.padded_steps else 1.0


class Engine:
    def __init__(self, artifact: Artifact | None = None, settings: Settings | None = None) -> None:
        self.artifact = artifact or find_artifact()
        self.settings = settings or Settings()
        meta = self.artifact.meta
        self.classes: list[str] = list(meta["classes"])
        self.model_version: str = meta["model_version"]
        self.feature_dim: int = int(meta["feature_dim"])
        self.max_length: int = self.settings.accepted_max_length(meta)
        workers = env_int("SEQSERVE_WORKERS", DEFAULT_WORKERS)
        threads = self.settings.ort_threads or max(1, (os.cpu_count() or 1) // workers)
        self.session, self.provider = open_session(self.artifact.onnx_path, self.settings.device, threads)
        self.ort_threads = threads
        self._pad = PadBuffer(self.feature_dim)

    def infer(self, seqs: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray], BatchStats]:
        """Probabilities [N, C] and per-sequence attention (own length), in input order, plus batch stats."""
        s = self.settings
        lengths = np.fromiter((len(q) for q in seqs), dtype=np.int64, count=len(seqs))
        groups = plan_batches(lengths, s.step_budget, s.max_sub_batch, s.min_efficiency)
        probs = np.empty((len(seqs), len(self.classes)), dtype=np.float32)
        attention: list[np.ndarray] = [None] * len(seqs)  # type: ignore[list-item]
        stats = BatchStats(sequences=len(seqs), real_steps=int(lengths.sum()))
        for g in groups:
            x, lens = self._pad.pad([seqs[i] for i in g])
            t0 = time.perf_counter()
            p, a = self.session.run(None, {"x": x, "lengths": lens})
            stats.call_seconds.append(time.perf_counter() - t0)
            probs[g] = p
            for k, i in enumerate(g):
                attention[i] = a[k, : lens[k]]
            stats.padded_steps += x.shape[0] * x.shape[1]
            stats.call_sizes.append(len(g))
        return probs, attention, stats

    def format(self, probs: np.ndarray, attention: list[np.ndarray]) -> list[dict]:
        """The JSON objects /predict returns, one per sequence."""
        out = []
        for p, a in zip(probs.tolist(), attention):
            best = max(range(len(p)), key=p.__getitem__)
            out.append(
                {
                    "label": self.classes[best],
                    "probabilities": dict(zip(self.classes, p)),
                    "attention": a.tolist(),
                    "model_version": self.model_version,
                }
            )
        return out

    def predict(self, seqs: list[np.ndarray]) -> tuple[list[dict], BatchStats]:
        probs, attention, stats = self.infer(seqs)
        return self.format(probs, attention), stats
