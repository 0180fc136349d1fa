"""The language model's part of the artifact contract: the step graph's load-time reference check and what a model
swap may change.

Its ``metadata.json`` section is typed as ``Generation`` in ``service.core.artifact``, where promote and the bento
builder read it without task code (docs/architecture.md says why).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.core.artifact import ArtifactMeta
from service.core.runtime import CHECK_TOLERANCE, judged


def check_reference(sess: ort.InferenceSession, reference_path: Path, tolerance: float = CHECK_TOLERANCE) -> dict:
    """The step graph (``training.tasks.generate.export``): the recorded streams batched, and each alone."""
    ref = np.load(reference_path)
    tokens, lengths = ref["tokens"], ref["lengths"]
    names = [i.name for i in sess.get_inputs()][2:]  # h (, c)
    states = [ref[f"state{i}"] for i in range(len(names))]
    want = [ref[f"out{i}"] for i in range(len(names) + 1)]
    got = sess.run(None, {"tokens": tokens, "lengths": lengths, **dict(zip(names, states))})
    diff_batched = max(float(np.abs(g - w).max()) for g, w in zip(got, want))
    diff_alone = 0.0
    for i, n in enumerate(lengths.tolist()):
        feed = {"tokens": tokens[i : i + 1, :n], "lengths": lengths[i : i + 1]}
        one = sess.run(None, {**feed, **{k: s[:, i : i + 1] for k, s in zip(names, states)}})
        diff_alone = max(diff_alone, float(np.abs(one[0][0] - want[0][i]).max()))
        diff_alone = max(diff_alone, *(float(np.abs(o[:, 0] - w[:, i]).max()) for o, w in zip(one[1:], want[1:])))
    return judged("streams", len(lengths), diff_batched, diff_alone, tolerance)


def swap_problem(serving: ArtifactMeta, new: ArtifactMeta) -> str | None:
    """Why ``new`` cannot replace ``serving`` without a restart, or None: the API workers validate prompts against
    the vocabulary they read at start-up."""
    old, gen = serving.generation, new.generation
    if gen is None or old is None or (gen.vocab, gen.special_ids) != (old.vocab, old.special_ids):
        return "its vocabulary differs from the one the API workers validate against: restart"
    return None
