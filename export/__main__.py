"""``python -m export --run runs/default --out artifacts/default [--no-store]``: the run's task (its ``config.json``
``"task"``, else ``classify``) picks the export from the registry (``training/tasks/__init__.py``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from service.core.artifact import use_project_model_store
from training.onnx import ParityError
from training.task import load
from training.tasks import task_of


def run_task(run_dir: str) -> str:
    """A training run's task: its config.json's ``"task"`` (runs from before the field are classifiers)."""
    config = Path(run_dir) / "config.json"
    return json.loads(config.read_text()).get("task", "classify") if config.exists() else "classify"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export", description="Export a training run to ONNX + metadata.")
    p.add_argument("--run", default="runs/default", help="training run directory (checkpoint.pt)")
    p.add_argument("--out", default="artifacts/default", help="artifact directory to write")
    p.add_argument("--held-out", default=None, help="data for the parity gate (default: the run's test file)")
    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="longest sequence the service accepts (a resource limit; default 4096 or the longest "
        "training sequence if longer; SEQSERVE_MAX_LENGTH overrides it at serve time)",
    )
    p.add_argument("--no-store", action="store_true", help="do not save into the BentoML model store")
    args = p.parse_args(argv)
    use_project_model_store()
    try:
        meta = load(task_of(run_task(args.run)).export)(args.run, args.out, args)
    except ParityError as e:
        print(f"export failed: {e}", file=sys.stderr)
        return 1
    except FileNotFoundError as e:
        print(f"export failed: {e}", file=sys.stderr)
        return 2
    print(
        json.dumps({"artifact": args.out, "model_version": meta["model_version"], "parity": meta["parity"]}, indent=2),
        file=sys.stderr,
    )
    if not args.no_store:
        from service.core.artifact import save_to_store

        print(f"stored as {save_to_store(args.out)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
