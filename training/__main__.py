"""``python -m training {train,lm,tune,eval,feedback,retrain,worker} ...``"""

from __future__ import annotations

import argparse
import sys

from training.data import DataError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    from training.evaluate import add_eval_args, evaluate
    from training.feedback import add_feedback_args, feedback
    from training.lm_train import add_lm_args, train_lm
    from training.retrain import add_retrain_args, retrain
    from training.train import add_train_args, train
    from training.tune import add_tune_args, tune
    from training.worker import add_worker_args, worker

    commands = [
        ("train", "train one model", add_train_args, train),
        ("lm", "train a character language model (text generation)", add_lm_args, train_lm),
        ("tune", "random search, selected on validation accuracy", add_tune_args, tune),
        ("eval", "accuracy suite: defaults on UCR/UEA datasets -> docs/accuracy.md", add_eval_args, evaluate),
        ("feedback", "the service's feedback store: export it as JSONL", add_feedback_args, feedback),
        ("retrain", "challenger from the champion + feedback; gate; promote", add_retrain_args, retrain),
        ("worker", "run queued retraining jobs (service database)", add_worker_args, worker),
    ]
    for name, help_text, add_args, func in commands:
        command = sub.add_parser(name, help=help_text)
        add_args(command)
        command.set_defaults(func=func)

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
