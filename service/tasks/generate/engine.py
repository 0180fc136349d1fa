"""The language model's engine: the step graph on ONNX Runtime (``StepModel``), checked at load, and the step
scheduler that batches every decoding step of every request (``service.core.decoding.scheduler``; or, for the
benchmark's comparison, ``service.core.decoding.per_request.PerRequestLoops``)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from service.core.artifact import Artifact, Generation
from service.core.decoding.per_request import PerRequestLoops
from service.core.decoding.scheduler import Scheduler
from service.core.runtime import SessionInfo, available_cpus, open_checked_session
from service.core.settings import Settings
from service.tasks.generate.metrics import GenerateMetrics
from service.tasks.generate.settings import GenerateSettings
from service.tasks.generate.spec import check_reference


class StepModel:
    """The step graph on an ONNX Runtime session: ``run(tokens [B, K], lengths [B], states) -> (logp, states)``."""

    def __init__(self, session: ort.InferenceSession, gen: Generation) -> None:
        self.session, self.gen = session, gen
        self.state_names = gen.state_names

    def run(self, tokens: np.ndarray, lengths: np.ndarray, states: list[np.ndarray]) -> tuple[np.ndarray, list]:
        out = self.session.run(None, {"tokens": tokens, "lengths": lengths, **dict(zip(self.state_names, states))})
        return out[0], out[1:]


class LMEngine:
    """One language model: its checked session and its step scheduler."""

    def __init__(
        self,
        artifact: Artifact,
        settings: Settings,
        knobs: GenerateSettings | None = None,
        metrics: GenerateMetrics | None = None,
    ) -> None:
        knobs = knobs or GenerateSettings()
        self.artifact = artifact
        self.model_version: str = artifact.meta.model_version
        self.gen = artifact.meta.generation
        self.ort_threads = settings.ort_threads or max(1, available_cpus() // settings.model_workers)
        self.info: SessionInfo = open_checked_session(
            artifact, settings.device, self.ort_threads, knobs.ort_spin, check=check_reference
        )
        self.metrics = metrics or GenerateMetrics(
            self.model_version, self.gen.rnn, self.info.provider, settings.device, artifact.meta.model_name
        )
        model = StepModel(self.info.session, self.gen)
        if knobs.mode == "per-request":
            version, metrics = self.model_version, self.metrics
            self.scheduler: Scheduler | PerRequestLoops = PerRequestLoops(
                lambda slots: Scheduler(model, version, slots, model.gen.chunk, 1, metrics)
            )
        else:
            self.scheduler = Scheduler(
                model,
                self.model_version,
                knobs.streams,
                knobs.chunk,
                knobs.prefill_streams,
                self.metrics,
                request_batching=knobs.mode == "request-batching",
                interval=knobs.stream_interval_ms / 1000,
            ).start()
