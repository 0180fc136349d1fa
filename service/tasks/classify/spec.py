"""The classifier's part of the artifact contract: its load-time reference check.

(Its ``metadata.json`` section, today in ``service.core.artifact.ArtifactMeta``, moves here in issue 23's step 4.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

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
