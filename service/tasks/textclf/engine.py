"""The text classifier's in-process engine: texts -> token rows -> probabilities and attention, batched by the
core's ``BatchEngine``.

**Rows.** A text becomes ``<s>`` and its sentencepiece ids (``tokens``), written as a float32 row ``[T, 1]``: the
core's padding and merging work on float32 rows, and ids below 2**24 are exact in float32 (the graph rounds them
back to integers). So texts of all requests are planned, padded and run as variable-length sequences like any
other (``service.core.batching``); the graph is exact under padding (packed RNN, masked pooling).

**Answers.** ``probabilities`` ``[N, C]`` and ``attention`` ``[N, T]`` (each row's weights over its own tokens).
"""

from __future__ import annotations

import numpy as np

from service.core.artifact import Artifact, TextClassification, find_artifact
from service.core.batching.engine import BatchEngine, BatchStats
from service.core.runtime import SessionInfo, available_cpus, open_checked_session
from service.core.settings import Batching, Settings
from service.core.tokens import BOS, Tokenizer
from service.tasks.textclf.spec import check_files, check_reference


def load_tokenizer(artifact: Artifact) -> Tokenizer:
    """The artifact's tokenizer, its file checked against the metadata first."""
    check_files(artifact.path, artifact.meta)
    return Tokenizer("sentencepiece", artifact.path / "tokenizer.model")


def tokens(tok: Tokenizer, text: str) -> list[int]:
    """``<s>`` and the text's ids: what the model reads."""
    return [BOS, *tok.encode(text)]


def as_row(ids: list[int]) -> np.ndarray:
    return np.asarray(ids, np.float32).reshape(-1, 1)


class TextClfEngine:
    def __init__(self, artifact: Artifact | None = None, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.artifact = artifact or find_artifact(self.settings.model or None)
        meta = self.artifact.meta
        assert meta.text_classification is not None, "not a text-classifier artifact"
        self.tc: TextClassification = meta.text_classification
        self.classes = meta.classes
        self.tokenizer = load_tokenizer(self.artifact)
        self.model_version: str = meta.model_version
        threads = self.settings.ort_threads or max(1, available_cpus() // self.settings.model_workers)
        self.info: SessionInfo = open_checked_session(
            self.artifact, self.settings.device, threads, spin=self.settings.ort_spin, check=check_reference
        )
        self.session, self.provider, self.ort_threads = self.info.session, self.info.provider, threads
        self.batching: Batching = self.settings.batching(cuda=self.provider == "CUDAExecutionProvider")
        self.batch = BatchEngine(self.session, 1, self.batching)

    def infer(self, rows: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray], BatchStats]:
        """Probabilities ``[N, C]`` and each row's attention (its own length), in input order."""
        probs = np.empty((len(rows), len(self.classes)), np.float32)
        att: list[np.ndarray] = [np.empty(0, np.float32)] * len(rows)
        stats = BatchStats()
        for g, (p, a), lens in self.batch.calls(rows, stats):
            probs[g] = p[: len(g)]
            for k, i in enumerate(g):
                att[i] = a[k, : lens[k]].copy()
        return probs, att, stats

    def classify(self, texts: list[str]) -> tuple[np.ndarray, list[np.ndarray]]:
        """In process (benchmarks, tests): texts -> probabilities and attention."""
        probs, att, _ = self.infer([as_row(tokens(self.tokenizer, t)) for t in texts])
        return probs, att
