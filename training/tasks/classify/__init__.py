"""Variable-length sequence classification: model.py (the classifier and its kernel branch), kernels.py, train.py,
tune.py, evaluate.py, export.py, retrain.py. Served by ``service/tasks/classify``."""

from __future__ import annotations

from service.core.artifact import ENTRIES
from training.task import Command, Task

TASK = Task(
    name="classify",
    commands=(
        Command("train", "train one model", f"{__name__}.train:add_train_args", f"{__name__}.train:train"),
        Command(
            "tune",
            "random search, selected on validation accuracy",
            f"{__name__}.tune:add_tune_args",
            f"{__name__}.tune:tune",
        ),
        Command(
            "eval",
            "accuracy suite: defaults on UCR/UEA datasets -> docs/accuracy.md",
            f"{__name__}.evaluate:add_eval_args",
            f"{__name__}.evaluate:evaluate",
        ),
        Command(
            "retrain",
            "challenger from the champion + feedback; gate; promote",
            f"{__name__}.retrain:add_retrain_args",
            f"{__name__}.retrain:retrain",
        ),
    ),
    export=f"{__name__}.export:export_cli",
    entry=ENTRIES["classify"],
)
