"""The in-process inference engine: the same batching code the HTTP service runs, without HTTP.

``Engine.infer`` takes a merged batch of variable-length sequences (from any number of requests), sorts it
by length, cuts it into sub-batches (``service.core.batching.padding.plan_batches``), pads each into a reused
buffer, runs ONNX Runtime, and returns results in the order the sequences came in.

Settings: ``service.core.settings.Settings`` (the ``SEQSERVE_*`` variables). The session is opened and checked
against the artifact's reference outputs by ``service.core.runtime.open_checked_session``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from service.core.artifact import Artifact, find_artifact
from service.core.batching.padding import PadBuffer, plan_batches
from service.core.batching.shapes import ShapedSessions, fixed_shapes_wanted, parse_ladder
from service.core.runtime import CUDA, SessionInfo, available_cpus, open_checked_session
from service.core.settings import Batching, Settings
from service.schema import predictions_json
from service.tasks.classify.spec import check_reference


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
        self.settings = settings or Settings()
        self.artifact = artifact or find_artifact(self.settings.model or None)
        meta = self.artifact.meta
        self.classes: list[str] = meta.classes
        self.model_version: str = meta.model_version
        self.feature_dim: int = meta.feature_dim
        self.max_length: int = self.settings.accepted_max_length(meta.max_length)
        threads = self.settings.ort_threads or max(1, available_cpus() // self.settings.model_workers)
        self.info: SessionInfo = open_checked_session(
            self.artifact, self.settings.device, threads, spin=self.settings.ort_spin, check=check_reference
        )
        self.session, self.provider = self.info.session, self.info.provider
        self.ort_threads = threads
        self._pad = PadBuffer(self.feature_dim)
        self.batching: Batching = self.settings.batching(cuda=self.provider == CUDA)
        self.shapes: ShapedSessions | None = None  # fixed call shapes (service/core/batching/shapes.py): CUDA's default
        if fixed_shapes_wanted(self.settings.fixed_shapes, self.provider == CUDA):
            ladder = parse_ladder(self.settings.cuda_shapes, self.max_length, self.batching.step_budget)
            self.shapes = ShapedSessions(
                self.artifact, self.info, ladder, threads, self.settings.ort_spin, self.settings.cuda_graph
            )

    def infer(self, seqs: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray], BatchStats]:
        """Probabilities [N, C] and per-sequence attention (own length), in input order, plus batch stats."""
        b = self.batching
        lengths = np.fromiter((len(q) for q in seqs), dtype=np.int64, count=len(seqs))
        probs = np.empty((len(seqs), len(self.classes)), dtype=np.float32)
        attention: list[np.ndarray] = [None] * len(seqs)  # type: ignore[list-item]
        stats = BatchStats(sequences=len(seqs), real_steps=int(lengths.sum()))
        if self.shapes is not None:
            for g, rows, steps in self.shapes.ladder.plan(lengths):
                t0 = time.perf_counter()
                p, a = self.shapes.run([seqs[i] for i in g], rows, steps)
                stats.call_seconds.append(time.perf_counter() - t0)
                probs[g] = p
                for k, i in enumerate(g):
                    attention[i] = a[k, : lengths[i]]  # a view: ``run`` returned copies
                stats.padded_steps += rows * steps
                stats.call_sizes.append(len(g))
            return probs, attention, stats
        groups = plan_batches(lengths, b.step_budget, b.max_sub_batch, b.min_efficiency)
        for g in groups:
            x, lens = self._pad.pad([seqs[i] for i in g], b.shape_buckets)
            t0 = time.perf_counter()
            p, a = self.session.run(None, {"x": x, "lengths": lens})
            stats.call_seconds.append(time.perf_counter() - t0)
            probs[g] = p[: len(g)]
            for k, i in enumerate(g):
                attention[i] = a[k, : lens[k]]
            stats.padded_steps += x.shape[0] * x.shape[1]
            stats.call_sizes.append(len(g))
        return probs, attention, stats

    def predict(self, seqs: list[np.ndarray]) -> tuple[bytes, BatchStats]:
        """The /predict response body (JSON, one object per sequence) and the batch stats."""
        probs, attention, stats = self.infer(seqs)
        return predictions_json(self.classes, self.model_version, probs, attention), stats
