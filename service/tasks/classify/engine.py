"""The classifier's in-process engine: the same batching code the HTTP service runs, without HTTP.

``Engine.infer`` takes a merged batch of variable-length sequences (from any number of requests) and returns
probabilities and attention in the order the sequences came in. The planning, padding and calls are
``service.core.batching.engine.BatchEngine``'s; on CUDA, calls go to fixed shapes instead
(``service.tasks.classify.shapes``).

Settings: ``service.core.settings.Settings`` (the ``SEQSERVE_*`` variables). The session is opened and checked
against the artifact's reference outputs by ``service.core.runtime.open_checked_session`` with this task's check
(``service.tasks.classify.spec.check_reference``).
"""

from __future__ import annotations

import time

import numpy as np

from service.core.artifact import Artifact, find_artifact
from service.core.batching.engine import BatchEngine, BatchStats
from service.core.batching.shapes import fixed_shapes_wanted, parse_ladder
from service.core.runtime import CUDA, SessionInfo, available_cpus, open_checked_session
from service.core.settings import Batching, Settings
from service.tasks.classify.schema import predictions_json
from service.tasks.classify.shapes import ShapedSessions
from service.tasks.classify.spec import check_reference


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
        self.batching: Batching = self.settings.batching(cuda=self.provider == CUDA)
        self.batch = BatchEngine(self.session, self.feature_dim, self.batching)
        self.shapes: ShapedSessions | None = None  # fixed call shapes on CUDA (service/tasks/classify/shapes.py)
        if fixed_shapes_wanted(self.settings.fixed_shapes, self.provider == CUDA):
            ladder = parse_ladder(self.settings.cuda_shapes, self.max_length, self.batching.step_budget)
            self.shapes = ShapedSessions(
                self.artifact, self.info, ladder, threads, self.settings.ort_spin, self.settings.cuda_graph
            )

    def infer(self, seqs: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray], BatchStats]:
        """Probabilities [N, C] and per-sequence attention (own length), in input order, plus batch stats."""
        probs = np.empty((len(seqs), len(self.classes)), dtype=np.float32)
        attention: list[np.ndarray] = [None] * len(seqs)  # type: ignore[list-item]
        stats = BatchStats()
        if self.shapes is not None:
            lengths = np.fromiter((len(q) for q in seqs), dtype=np.int64, count=len(seqs))
            stats.sequences, stats.real_steps = len(seqs), int(lengths.sum())
            for g, rows, steps in self.shapes.ladder.plan(lengths):
                t0 = time.perf_counter()
                p, a = self.shapes.run([seqs[i] for i in g], rows, steps)
                stats.call(len(g), rows * steps, time.perf_counter() - t0)
                probs[g] = p
                for k, i in enumerate(g):
                    attention[i] = a[k, : lengths[i]]  # a view: ``run`` returned copies
            return probs, attention, stats
        for g, (p, a), lens in self.batch.calls(seqs, stats):
            probs[g] = p[: len(g)]
            for k, i in enumerate(g):
                attention[i] = a[k, : lens[k]]
        return probs, attention, stats

    def predict(self, seqs: list[np.ndarray]) -> tuple[bytes, BatchStats]:
        """The /predict response body (JSON, one object per sequence) and the batch stats."""
        probs, attention, stats = self.infer(seqs)
        return predictions_json(self.classes, self.model_version, probs, attention), stats
