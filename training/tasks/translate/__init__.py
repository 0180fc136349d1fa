"""Translation with a seq2seq GRU/LSTM and attention: data.py (Ding pairs, TSV), model.py, decode.py (greedy and
beam over any step function), train.py, export.py. Served by ``service/tasks/translate``."""

from __future__ import annotations

from service.core.artifact import ENTRIES
from training.task import Command, Task

TASK = Task(
    name="translate",
    commands=(
        Command(
            "translate",
            "train a seq2seq translator with attention (German -> English by default)",
            f"{__name__}.train:add_translate_args",
            f"{__name__}.train:train_translate",
        ),
    ),
    export=f"{__name__}.export:export_cli",
    entry=ENTRIES["translate"],
)
