"""``python -m export --run runs/default --out artifacts/default [--no-store]``: a classifier or a language
model run (its ``config.json`` says ``"task": "generate"``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from export.onnx_export import ParityError, export_run
from service.core.artifact import use_project_model_store


def is_language_model(run_dir: str) -> bool:
    config = Path(run_dir) / "config.json"
    return config.exists() and json.loads(config.read_text()).get("task") == "generate"


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
        if is_language_model(args.run):
            from export.lm_export import export_lm_run

            meta = export_lm_run(args.run, args.out)
        else:
            meta = export_run(args.run, args.out, args.held_out, args.max_length)
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
