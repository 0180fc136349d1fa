"""The translator's part of the artifact contract: its files' integrity, the two graphs' load-time reference check,
and what a model swap may change.

Its ``metadata.json`` section is typed as ``Translation`` in ``service.core.artifact``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.core.artifact import ArtifactMeta, check_file_hashes
from service.core.runtime import CHECK_TOLERANCE, judged
from service.core.tokens import BOS


def check_files(path: Path, meta: ArtifactMeta) -> None:
    """``encoder.onnx`` and ``tokenizer.model`` must be the files that were exported (their SHA-256)."""
    assert meta.translation is not None
    check_file_hashes(path, meta.translation.files_sha256)


def check_reference(
    encoder: ort.InferenceSession, step: ort.InferenceSession, reference_path: Path, tolerance: float = CHECK_TOLERANCE
) -> dict:
    """The recorded sentences through the encoder and the first decoding step, batched and each alone."""
    ref = np.load(reference_path)
    src, lengths = ref["src"], ref["lengths"]
    n_enc = len(encoder.get_outputs())
    enc_want = [ref[f"enc{i}"] for i in range(n_enc)]
    step_want = [ref[f"step{i}"] for i in range(len(step.get_outputs()))]
    state_names = [i.name for i in step.get_inputs()][5:]

    def run(rows: slice, width: int) -> tuple[list, list]:
        enc = encoder.run(None, {"src": src[rows, :width], "lengths": lengths[rows]})
        memory, keys, mask, *state = enc
        n = memory.shape[0]
        feeds = {"token": np.full(n, BOS, np.int64), "feed": np.zeros((n, memory.shape[2]), np.float32)}
        feeds.update({"memory": memory, "keys": keys, "mask": mask, **dict(zip(state_names, state))})
        return enc, step.run(None, feeds)

    enc, out = run(slice(None), src.shape[1])
    diff_batched = max(float(np.abs(g - w).max()) for g, w in zip([*enc, *out], [*enc_want, *step_want]))
    diff_alone = 0.0
    for i, n in enumerate(lengths.tolist()):
        enc1, out1 = run(slice(i, i + 1), n)
        for g, w in zip(enc1[:3], enc_want[:3]):
            diff_alone = max(diff_alone, float(np.abs(g[0, :n] - w[i, :n]).max()))
        for g, w in zip(enc1[3:], enc_want[3:]):
            diff_alone = max(diff_alone, float(np.abs(g[:, 0] - w[:, i]).max()))
        diff_alone = max(diff_alone, float(np.abs(out1[0][0] - step_want[0][i]).max()))
    return judged("sentences", len(lengths), diff_batched, diff_alone, tolerance)


def swap_problem(serving: ArtifactMeta, new: ArtifactMeta) -> str | None:
    """Why ``new`` cannot replace ``serving`` without a restart, or None: the API workers tokenize and check
    limits with what they read at start-up."""
    old, tr = serving.translation, new.translation
    if tr is None or old is None:
        return "not a translator: restart"
    if (tr.tokenizer, tr.vocab, tr.files_sha256.get("tokenizer.model")) != (
        old.tokenizer,
        old.vocab,
        old.files_sha256.get("tokenizer.model"),
    ):
        return "its tokenizer differs from the one the API workers use: restart"
    return None
