"""The champion pointer: which model every replica serves when ``SEQSERVE_MODEL`` names none (issue 10).

One row per task (``classify``, ``generate``: a classifier and a language model are served side by side, each
following its own champion), and one per named model of a model repository (key ``<task>/<name>``,
``service.core.repository``; promoted with ``--name``; the column keeps its first name, ``task``) in the
service database (``service.core.store.database``, beside the feedback): the model's reference (a model store
tag or an artifact directory), its version, and when it was promoted. Promotion (``python -m export.promote
REF``) replaces the row in one transaction, so readers see the old pointer or the new one, never half of each.
The model service polls it (``SEQSERVE_RELOAD_INTERVAL_S``) and swaps models between batches
(``service.core.lifecycle.Follower``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from service.core.artifact import NO_MODEL, ModelNotFound
from service.core.store.database import Database, database_exists

SCHEMA = """
CREATE TABLE IF NOT EXISTS champions (
    task TEXT PRIMARY KEY,
    ref TEXT NOT NULL,
    version TEXT NOT NULL,
    promoted_at REAL NOT NULL
)"""


@dataclass(frozen=True)
class Champion:
    ref: str
    version: str
    promoted_at: float


class ChampionPointer:
    def __init__(self, where: str | Path, task: str = "classify") -> None:
        self.db = Database(where)
        self.db.create(SCHEMA)
        self.task = task

    def get(self) -> Champion | None:
        row = self.db.execute("SELECT ref, version, promoted_at FROM champions WHERE task = ?", (self.task,)).fetchone()
        return Champion(*row) if row else None

    def set(self, ref: str, version: str) -> Champion:
        champion = Champion(ref, version, time.time())
        self.db.execute(
            "INSERT INTO champions VALUES (?, ?, ?, ?) "
            "ON CONFLICT (task) DO UPDATE SET ref = excluded.ref, version = excluded.version, "
            "promoted_at = excluded.promoted_at",
            (self.task, champion.ref, champion.version, champion.promoted_at),
        )  # autocommit: one statement, one transaction
        return champion

    def close(self) -> None:
        self.db.close()


def served_ref(explicit: str, where: str | Path, task: str = "classify") -> tuple[str, str]:
    """Which model to serve, and why: ``SEQSERVE_MODEL`` when set, else the promoted champion of ``task``;
    with neither, ``ModelNotFound`` (never whatever the model store holds last)."""
    if explicit:
        return explicit, "SEQSERVE_MODEL"
    champion = ChampionPointer(where, task).get() if database_exists(where) else None
    if champion:
        return champion.ref, "champion"
    raise ModelNotFound(NO_MODEL)
