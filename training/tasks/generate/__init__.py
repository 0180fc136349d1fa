"""Text generation with a character language model: model.py (the LM and its step graph), train.py, export.py.
Served by ``service/tasks/generate``."""

from __future__ import annotations

from service.core.artifact import ENTRIES
from training.task import Command, Task

TASK = Task(
    name="generate",
    commands=(
        Command(
            "lm",
            "train a character language model (text generation)",
            f"{__name__}.train:add_lm_args",
            f"{__name__}.train:train_lm",
        ),
    ),
    export=f"{__name__}.export:export_cli",
    entry=ENTRIES["generate"],
)
