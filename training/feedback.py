"""``python -m training feedback export --out file.jsonl``: the feedback store as JSONL training data.

Each line is ``{"sequence": [[...], ...], "label": "...", "id": "...", "split": "train|holdout"}``; the
training reader (``training.data.read_jsonl``) ignores the extra keys. The store is the service's
(``service.tasks.classify.feedback``), found under ``--data-dir`` (default ``SEQSERVE_DATA_DIR``, else ``.seqserve``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from service.core.store.database import add_database_arg, database_exists
from service.tasks.classify.feedback import SPLITS, open_store


def add_feedback_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="feedback_command", required=True)
    exp = sub.add_parser("export", help="write the stored feedback as JSONL training data")
    exp.add_argument("--out", required=True, help="JSONL file to write")
    add_database_arg(exp)
    exp.add_argument("--split", choices=[*SPLITS, "all"], default="all")


def export_feedback(args: argparse.Namespace) -> int:
    """Write the items; return how many were written."""
    if not database_exists(args.data_dir):
        raise ValueError(f"{args.data_dir}: no feedback store there (--data-dir or SEQSERVE_DATA_DIR)")
    store = open_store(args.data_dir)
    n = 0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with out.open("w", encoding="utf-8") as fh:
            for item in store.items(None if args.split == "all" else args.split):
                row = {"sequence": item.sequence.tolist(), "label": item.label, "id": item.id, "split": item.split}
                fh.write(json.dumps(row) + "\n")
                n += 1
    finally:
        store.close()
    print(f"feedback: wrote {n} items to {out}")
    return n


def feedback(args: argparse.Namespace) -> None:
    if args.feedback_command == "export":
        export_feedback(args)
