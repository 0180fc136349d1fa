"""The task-free half of a batch task's engine: plan a merged batch, pad each call, run it, count it.

``BatchEngine.calls`` takes the variable-length sequences of one merged batch (from any number of requests),
cuts them into length-sorted calls (``service.core.batching.padding.plan_batches``), pads each call into a
reused buffer and runs the session on the task's two input names (the padded ``[B, T, F]`` array and the int64
lengths). It yields each call's row indices, the session's outputs and the lengths, and counts real and padded
steps, sequences per call and seconds per call in ``BatchStats`` (the batch metrics in ``service.core.metrics``).
The task turns the outputs into its answers (the classifier: ``service.tasks.classify.engine``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from service.core.batching.padding import PadBuffer, plan_batches
from service.core.settings import Batching


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

    def call(self, size: int, padded_steps: int, seconds: float) -> None:
        self.call_sizes.append(size)
        self.padded_steps += padded_steps
        self.call_seconds.append(seconds)


class BatchEngine:
    """Runs ``session`` over length-planned, padded calls. ``inputs``: the graph's names for the padded sequences
    and their lengths."""

    def __init__(
        self,
        session: ort.InferenceSession,
        feature_dim: int,
        batching: Batching,
        inputs: tuple[str, str] = ("x", "lengths"),
    ) -> None:
        self.session, self.batching, self.inputs = session, batching, inputs
        self.pad = PadBuffer(feature_dim)  # public: loadtest/gpu_probe.py pads with it

    def calls(self, seqs: list[np.ndarray], stats: BatchStats) -> Iterator[tuple[np.ndarray, list, np.ndarray]]:
        """Per call: (indices into ``seqs``, the session's outputs, the call's lengths). Outputs have at least
        ``len(indices)`` rows (more when shape buckets add padding rows)."""
        b = self.batching
        lengths = np.fromiter((len(q) for q in seqs), dtype=np.int64, count=len(seqs))
        stats.sequences += len(seqs)
        stats.real_steps += int(lengths.sum())
        x_name, len_name = self.inputs
        for g in plan_batches(lengths, b.step_budget, b.max_sub_batch, b.min_efficiency):
            x, lens = self.pad.pad([seqs[i] for i in g], b.shape_buckets)
            t0 = time.perf_counter()
            outputs = self.session.run(None, {x_name: x, len_name: lens})
            stats.call(len(g), x.shape[0] * x.shape[1], time.perf_counter() - t0)
            yield g, outputs, lens
