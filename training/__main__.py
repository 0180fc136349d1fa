"""``python -m training COMMAND ...``: each registered task's commands (``training/tasks/__init__.py``: train, tune,
eval, retrain for the classifier; lm for the language model) and the shared ones (feedback, worker)."""

from __future__ import annotations

import argparse
import sys

from training.data import DataError
from training.task import Command, add_command
from training.tasks import TASKS

SHARED = (
    Command(
        "feedback",
        "the service's feedback store: export it as JSONL",
        "training.feedback:add_feedback_args",
        "training.feedback:feedback",
    ),
    Command(
        "worker",
        "run queued retraining jobs (service database)",
        "training.worker:add_worker_args",
        "training.worker:worker",
    ),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (*(c for task in TASKS.values() for c in task.commands), *SHARED):
        add_command(sub, command)
    args = parser.parse_args(argv)
    if args.command in ("retrain", "worker"):
        from service.core.artifact import use_project_model_store

        use_project_model_store()  # the champion's tag resolves in the same store as export's
    try:
        args.func(args)
    except (DataError, ValueError) as e:  # bad data, or options that do not fit together
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
