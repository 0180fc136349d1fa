"""Text classification with transfer learning (ULMFiT): data.py (the vader corpora, TSV), pretrain.py (the
language model on unlabelled text), model.py (the LM's encoder + concat pooling + head), train.py (fine-tuning),
export.py. Served by ``service/tasks/textclf``."""

from __future__ import annotations

from service.core.artifact import ENTRIES
from training.task import Command, Task

TASK = Task(
    name="textclf",
    commands=(
        Command(
            "textclf",
            "fine-tune a text classifier from a pre-trained language model (or from scratch)",
            f"{__name__}.train:add_textclf_args",
            f"{__name__}.train:train_textclf",
        ),
        Command(
            "textlm",
            "pre-train the text classifier's language model on unlabelled text",
            f"{__name__}.pretrain:add_textlm_args",
            f"{__name__}.pretrain:train_textlm",
        ),
    ),
    export=f"{__name__}.export:export_cli",
    entry=ENTRIES["textclf"],
)
