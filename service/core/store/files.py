"""Append-only files kept durably: what the rooms' file stores (forecast actuals, text-classifier feedback) share."""

from __future__ import annotations

import os
from pathlib import Path


def append_synced(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` (its folder made if missing) and ``fsync`` it: on return the bytes are on disk.
    An ``OSError`` (a disk that filled midway) is raised with what was written cut off again, so no half line
    is left for the next append to continue. Callers serialise their appends (one lock per file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as f:
        before = f.tell()
        try:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        except OSError:
            f.truncate(before)
            raise
