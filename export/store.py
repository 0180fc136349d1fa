"""Put an artifact directory (model.onnx + metadata.json + reference.npz + checkpoint.pt) into the BentoML
model store (the checkpoint is what retraining fine-tunes from; the service never reads it).

The tag is ``seqclassifier:<version>``; the version (from metadata.json) hashes the graph and the serving
contract, so storing the same artifact twice is a no-op.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import bentoml
from bentoml.exceptions import NotFound

ARTIFACT_FILES = ("model.onnx", "metadata.json", "reference.npz", "checkpoint.pt")
OPTIONAL_FILES = ("reference.npz", "checkpoint.pt")  # absent from artifacts exported by older versions


def save_to_store(artifact_dir: str | Path) -> str:
    """Store the artifact under its content-hash version (idempotent); return the tag string."""
    artifact_dir = Path(artifact_dir)
    meta = json.loads((artifact_dir / "metadata.json").read_text())
    tag = f"{meta['model_name']}:{meta['model_version']}"
    try:
        bentoml.models.get(tag)
        return tag  # the same bytes are already stored
    except NotFound:
        pass
    labels = {"task": meta.get("task", "classify"), "rnn": meta["rnn"]["rnn"]}
    labels.update({"attention": meta["rnn"]["attention"]} if "attention" in meta["rnn"] else {})
    keys = ("schema_version", "feature_dim", "max_length", "opset", "created_at")
    summary = {k: meta[k] for k in keys if k in meta}
    for k in ("test_accuracy", "val_loss_nats"):
        if k in meta["training_metrics"]:
            summary[k] = meta["training_metrics"][k]
    with bentoml.models.create(tag, labels=labels, metadata=summary, module="seqserve") as model:
        for name in ARTIFACT_FILES:
            if name in OPTIONAL_FILES and not (artifact_dir / name).exists():
                continue  # exported before these files existed (unchecked at load / retrained from scratch)
            shutil.copy2(artifact_dir / name, model.path_of(name))
    return tag


if __name__ == "__main__":
    import sys

    from service.runtime import use_project_model_store

    use_project_model_store()
    print(f"stored as {save_to_store(sys.argv[1] if len(sys.argv) > 1 else 'artifacts/default')}", file=sys.stderr)
