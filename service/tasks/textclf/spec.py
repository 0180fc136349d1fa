"""The text classifier's part of the artifact contract: its tokenizer's integrity, the load-time reference check, and
what a model swap may change.

Its ``metadata.json`` section is typed as ``TextClassification`` in ``service.core.artifact``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.core.artifact import ArtifactMeta, check_file_hashes
from service.core.runtime import CHECK_TOLERANCE, judged


def check_files(path: Path, meta: ArtifactMeta) -> None:
    """``tokenizer.model`` must be the file that was exported (its SHA-256)."""
    assert meta.text_classification is not None
    check_file_hashes(path, meta.text_classification.files_sha256)


def check_reference(sess: ort.InferenceSession, reference_path: Path, tolerance: float = CHECK_TOLERANCE) -> dict:
    """Run the recorded texts batched and each alone; ``ReferenceMismatch`` beyond ``tolerance``."""
    ref = np.load(reference_path)
    x, lengths, probs, att = ref["x"], ref["lengths"], ref["probabilities"], ref["attention"]
    p_batch, a_batch = sess.run(None, {"x": x, "lengths": lengths})
    diff_batched = max(float(np.abs(p_batch - probs).max()), float(np.abs(a_batch - att).max()))
    diff_alone = 0.0
    for i, n in enumerate(lengths.tolist()):
        p, a = sess.run(None, {"x": x[i : i + 1, :n], "lengths": lengths[i : i + 1]})
        diff_alone = max(diff_alone, float(np.abs(p[0] - probs[i]).max()), float(np.abs(a[0] - att[i, :n]).max()))
    return judged("texts", len(lengths), diff_batched, diff_alone, tolerance)


def swap_problem(serving: ArtifactMeta, new: ArtifactMeta) -> str | None:
    """Why ``new`` cannot replace ``serving`` without a restart, or None. The API workers tokenize with the
    tokenizer they loaded at start-up and label answers with its classes: those must stay."""
    a, b = serving.text_classification, new.text_classification
    if a is None or b is None:
        return "not a text classifier: that needs a restart"
    if (a.vocab, a.files_sha256.get("tokenizer.model"), a.max_tokens, serving.classes) != (
        b.vocab,
        b.files_sha256.get("tokenizer.model"),
        b.max_tokens,
        new.classes,
    ):
        return (
            f"its contract differs (classes {new.classes}, tokenizer, max_tokens {b.max_tokens}; serving "
            f"{serving.classes}, max_tokens {a.max_tokens}): that needs a restart"
        )
    return None
