"""The classifier's part of the artifact contract: its load-time reference check and what a model swap may change.

Its ``metadata.json`` fields (classes, feature_dim, max_length, normalisation) are typed in
``service.core.artifact.ArtifactMeta``, where promote and the bento builder read them without task code
(docs/architecture.md says why).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.core.artifact import ArtifactMeta
from service.core.runtime import CHECK_TOLERANCE, judged


def check_reference(sess: ort.InferenceSession, reference_path: Path, tolerance: float = CHECK_TOLERANCE) -> dict:
    """Run the recorded reference sequences alone and batched; ``ReferenceMismatch`` beyond ``tolerance``."""
    ref = np.load(reference_path)
    x, lengths, probs, att = ref["x"], ref["lengths"], ref["probabilities"], ref["attention"]
    p_batch, a_batch = sess.run(None, {"x": x, "lengths": lengths})
    diff_batched = max(float(np.abs(p_batch - probs).max()), float(np.abs(a_batch - att).max()))
    diff_alone = 0.0
    for i, n in enumerate(lengths.tolist()):
        p, a = sess.run(None, {"x": x[i : i + 1, :n], "lengths": lengths[i : i + 1]})
        diff_alone = max(diff_alone, float(np.abs(p[0] - probs[i]).max()), float(np.abs(a[0] - att[i, :n]).max()))
    return judged("sequences", len(lengths), diff_batched, diff_alone, tolerance)


def swap_problem(serving: ArtifactMeta, new: ArtifactMeta) -> str | None:
    """Why ``new`` cannot replace ``serving`` without a restart, or None. The API workers validate requests
    against the feature count and label answers with the classes they read at start-up: those must stay."""
    if (new.feature_dim, new.classes) != (serving.feature_dim, serving.classes):
        return (
            f"its contract differs (feature_dim {new.feature_dim}, classes {new.classes}; "
            f"serving {serving.feature_dim}, {serving.classes}): that needs a restart"
        )
    return None
