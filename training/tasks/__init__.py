"""THE registry: one line per task. Read by ``python -m training`` (its commands), ``python -m export`` (a run's
task -> its export), ``export.promote`` (an artifact's task must be known) and ``export.bento`` (the entry).
Adding a task: ``service/tasks/<task>/``, ``training/tasks/<task>/`` with its ``TASK``, and its line here."""

from __future__ import annotations

from training.task import Task
from training.tasks import classify, forecast, generate, textclf, translate

TASKS: dict[str, Task] = {
    "classify": classify.TASK,
    "generate": generate.TASK,
    "forecast": forecast.TASK,
    "translate": translate.TASK,
    "textclf": textclf.TASK,
}


def task_of(name: str) -> Task:
    """The registered task ``name``; ``ValueError`` naming the known ones."""
    if name not in TASKS:
        raise ValueError(f"task {name!r} is not registered (training/tasks/__init__.py): one of {sorted(TASKS)}")
    return TASKS[name]
