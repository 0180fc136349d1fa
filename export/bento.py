"""``python -m export.bento [REF]`` (``make bento``): build the Bento of one named model, saying which.

REF is a model store tag or an artifact directory; without it, the promoted champion (``service.core.store.champion``).
The build uses ``deploy/bentofile.yaml`` with its ``models`` set to that one tag and ``SEQSERVE_MODEL`` set to
it in the image, so the container serves exactly the model it bundles (never the store's latest). No Docker
daemon is needed to build; ``bentoml containerize seqserve:<tag>`` is the next step where one exists.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from export.promote import lasting_ref
from service.core.artifact import ContractError, ModelNotFound, use_project_model_store
from service.core.store.database import add_database_arg
from training.tasks import task_of

ROOT = Path(__file__).resolve().parents[1]


def build(ref: str | None, data_dir: str) -> tuple[str, str]:
    """Build; return (model tag bundled, bento tag)."""
    use_project_model_store()
    if not ref:
        from service.core.store.champion import ChampionPointer

        champion = ChampionPointer(data_dir).get()
        if champion is None:
            raise ModelNotFound("no REF given and no champion promoted (python -m export.promote REF --store)")
        ref = champion.ref
    ref, _, task = lasting_ref(ref, store=True)  # the artifact opens, its contract reads; a directory is stored
    spec = yaml.safe_load((ROOT / "deploy/bentofile.yaml").read_text())
    spec["service"] = task_of(task).entry  # the entry that serves this model's task (training/tasks/__init__.py)
    spec["models"] = [ref]
    spec["envs"] = [e for e in spec.get("envs", []) if e["name"] != "SEQSERVE_MODEL"]
    spec["envs"].append({"name": "SEQSERVE_MODEL", "value": ref})
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
        yaml.safe_dump(spec, fh)
    bentoml = Path(sys.executable).with_name("bentoml")
    cmd = [str(bentoml)] if bentoml.exists() else [sys.executable, "-m", "bentoml"]
    try:
        proc = subprocess.run(
            [*cmd, "build", "-f", fh.name, str(ROOT)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "SEQSERVE_MODEL": ref},
        )
    finally:
        os.unlink(fh.name)
    if proc.returncode != 0:
        raise RuntimeError(f"bentoml build failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    found = re.search(r"\bseqserve:[a-z0-9]+\b", proc.stdout)  # BentoML prints Bento(tag="seqserve:<version>")
    bento = found.group(0) if found else ""
    return ref, bento


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.bento", description=__doc__)
    p.add_argument("ref", nargs="?", default="", help="model store tag or artifact directory (default: the champion)")
    add_database_arg(p)
    args = p.parse_args(argv)
    try:
        model, bento = build(args.ref or None, args.data_dir)
    except (ModelNotFound, ContractError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"bento {bento or 'seqserve'} bundles model {model} (SEQSERVE_MODEL={model} in the image)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
