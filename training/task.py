"""What a task gives the CLIs: a ``Task`` (one per ``training/tasks/<task>/__init__.py``), listed once in the registry
``training/tasks/__init__.py``.

Everything is named as ``"module:function"`` and imported when used, so ``python -m export.promote`` and
``python -m export.bento`` read the registry without importing torch, and a CLI loads only the task it runs.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Command:
    """``python -m training NAME``: ``add_args(parser)`` then ``run(args)``."""

    name: str
    help: str
    add_args: str  # "module:function"
    run: str


@dataclass(frozen=True)
class Task:
    name: str  # metadata.json's "task", the champion rows' task, a run's config.json "task"
    commands: tuple[Command, ...]  # its training CLI commands (the first one trains)
    export: str  # "module:function(run_dir, out_dir, options) -> metadata dict"
    entry: str  # the BentoML entry that serves it (bento, Dockerfile, Kubernetes)


def load(ref: str) -> Callable[..., Any]:
    """``"package.module:function"`` -> the function (its module imported now)."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def add_command(sub: Any, command: Command) -> None:
    """One subcommand of ``python -m training`` (``sub``: argparse's subparsers)."""
    parser: argparse.ArgumentParser = sub.add_parser(command.name, help=command.help)
    load(command.add_args)(parser)
    parser.set_defaults(func=lambda args: load(command.run)(args))
