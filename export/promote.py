"""``python -m export.promote REF [--name NAME] [--data-dir DIR]``: make REF the champion every replica serves.

With ``--name``, REF becomes the champion of the named model NAME instead (a server's model repository,
``SEQSERVE_MODELS=NAME,...``: service/core/repository.py); the task's own champion is left as it is.

REF is a model store tag (``seqclassifier:<version>``) or an exported artifact directory. The artifact is
opened and its contract read before the pointer moves (``service.core.store.champion``); running services that follow
the pointer (no ``SEQSERVE_MODEL``) load, check and swap to it within ``SEQSERVE_RELOAD_INTERVAL_S``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.core.artifact import (
    ContractError,
    ModelNotFound,
    ReferenceMismatch,
    check_integrity,
    find_artifact,
    use_project_model_store,
)
from service.core.repository import NAME, pointer_key
from service.core.store.champion import Champion, ChampionPointer
from service.core.store.database import add_database_arg
from training.tasks import task_of


def lasting_ref(ref: str, store: bool) -> tuple[str, str, str]:
    """``ref`` opened and its contract read, as a reference that stays valid, its model version and its task.
    A directory is put into the BentoML model store when ``store`` (the versioned tag), else named by its
    absolute path."""
    art = find_artifact(ref)
    task_of(art.meta.task)  # a task this seqserve serves (training/tasks/__init__.py), else ValueError
    check_integrity(art)  # a damaged model.onnx is refused here, not only by the services that would load it
    if Path(ref).is_dir():
        if store:
            from service.core.artifact import save_to_store

            ref = save_to_store(ref)
        else:
            ref = str(Path(ref).resolve())
    return ref, art.meta.model_version, art.meta.task


def promote(ref: str, data_dir: str | Path, store: bool = False, name: str = "") -> Champion:
    """Point the champion of ``ref``'s task (or of the named model ``name``) at ``ref`` (see ``lasting_ref``);
    return the new pointer."""
    if name and not NAME.match(name):
        raise ValueError(
            f"--name {name!r}: letters, digits, '_', '.', '-' (at most 64, starting with a letter or digit)"
        )
    ref, version, task = lasting_ref(ref, store)
    return ChampionPointer(data_dir, pointer_key(task, name) if name else task).set(ref, version)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.promote", description=__doc__)
    p.add_argument("ref", help="model store tag or artifact directory")
    add_database_arg(p)
    p.add_argument("--store", action="store_true", help="a directory: put it in the model store, point at its tag")
    p.add_argument("--name", default="", help="promote as the named model NAME of a model repository (SEQSERVE_MODELS)")
    args = p.parse_args(argv)
    use_project_model_store()
    try:
        champion = promote(args.ref, args.data_dir, args.store, args.name)
    except (ModelNotFound, ContractError, ReferenceMismatch, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    named = f" of {args.name!r}" if args.name else ""
    print(f"champion{named}: {champion.ref} (model {champion.version})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
