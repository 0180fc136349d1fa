"""Durable feedback: labelled sequences posted to ``POST /feedback``, kept for retraining (issue 10).

The store is one small interface (``FeedbackStore``) over the service database (``service.core.store.database``): an
embedded SQLite file ``feedback.db`` under ``SEQSERVE_DATA_DIR``, or PostgreSQL (``SEQSERVE_DATABASE_URL``):

* **Durable.** One transaction per request, committed before the response, so a 2xx means the items are on
  disk. The durability settings (SQLite: WAL, ``synchronous=FULL``; PostgreSQL: ``fsync``,
  ``synchronous_commit``) are read back when the store opens, and a database without them is refused.
* **Split once.** Each item gets a random id at insert and, by a hash of that id, a split: ``train`` or
  ``holdout`` (``SEQSERVE_FEEDBACK_HOLDOUT``, default 0.2). The split is stored with the item and never
  changes, so retraining never sees a holdout item.
* **Bounded.** At most ``SEQSERVE_FEEDBACK_MAX_ITEMS`` items; beyond that ``add`` raises ``StoreFull``.
* **Honest when the database fails.** A write the database refuses (disk full, read-only, connection gone)
  raises ``StoreUnavailable`` (the route answers 503); its transaction did not commit, so nothing of it is
  stored and nothing is acknowledged.

Sequences are stored as float32 bytes with their shape. ``python -m training feedback export`` writes the
store out as JSONL training data.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.core.store.database import Database, StoreError  # noqa: F401 - StoreError: part of this API

SPLITS = ("train", "holdout")
SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    position INTEGER NOT NULL,
    label TEXT NOT NULL,
    split TEXT NOT NULL CHECK (split IN ('train', 'holdout')),
    steps INTEGER NOT NULL,
    features INTEGER NOT NULL,
    sequence BLOB NOT NULL,
    model_version TEXT
)"""


class StoreFull(RuntimeError):
    """The store holds its maximum number of items."""


class StoreUnavailable(RuntimeError):
    """The database refused the write (disk full, read-only, gone): nothing of the request was stored."""


@dataclass(frozen=True)
class FeedbackItem:
    id: str
    created_at: float
    label: str
    split: str
    sequence: np.ndarray  # float32 [T, F]
    model_version: str | None


def assign_split(item_id: str, holdout: float) -> str:
    """``holdout`` for a ``holdout`` fraction of ids, by their SHA-256; the same id always gets the same split."""
    h = int.from_bytes(hashlib.sha256(item_id.encode()).digest()[:8], "big") / 2**64
    return "holdout" if h < holdout else "train"


class FeedbackStore:
    """Labelled sequences, each with its split; ``where``: a data directory or a PostgreSQL URL."""

    def __init__(self, where: str | Path, holdout: float = 0.2, max_items: int = 1_000_000) -> None:
        self.holdout, self.max_items = holdout, max_items
        self.db = Database(where)
        self.durability = self.db.durability
        self.db.create(SCHEMA)

    def add(self, items: list[tuple[np.ndarray, str]], model_version: str | None = None) -> list[FeedbackItem]:
        """Store ``(sequence, label)`` pairs in one transaction; return them as stored (id, split)."""
        now = time.time()
        stored = []
        for seq, label in items:
            item_id = uuid.uuid4().hex
            arr = np.ascontiguousarray(seq, dtype="<f4")
            stored.append(FeedbackItem(item_id, now, label, assign_split(item_id, self.holdout), arr, model_version))
        rows = [
            (s.id, s.created_at, k, s.label, s.split, *s.sequence.shape, s.sequence.tobytes(), s.model_version)
            for k, s in enumerate(stored)
        ]
        try:
            with self.db.transaction(lock="feedback"):
                (n,) = self.db.execute("SELECT count(*) FROM feedback").fetchone()
                if n + len(rows) > self.max_items:
                    raise StoreFull(f"the feedback store holds {n} items; its limit is {self.max_items} (max items)")
                for row in rows:
                    self.db.execute("INSERT INTO feedback VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
        except self.db.errors as e:  # the transaction did not commit: nothing of it is stored
            raise StoreUnavailable(f"the feedback store cannot write now ({type(e).__name__}: {e})") from e
        return stored

    def counts(self) -> dict[str, int]:
        rows = self.db.execute("SELECT split, count(*) FROM feedback GROUP BY split").fetchall()
        return {split: dict(rows).get(split, 0) for split in SPLITS}

    def items(self, split: str | None = None) -> Iterator[FeedbackItem]:
        """Every item (or one split's), oldest first."""
        query = "SELECT id, created_at, label, split, steps, features, sequence, model_version FROM feedback"
        args: tuple = ()
        if split is not None:
            query, args = query + " WHERE split = ?", (split,)
        rows = self.db.execute(query + " ORDER BY created_at, position", args).fetchall()
        for item_id, created, label, sp, steps, features, blob, version in rows:
            seq = np.frombuffer(blob, dtype="<f4").reshape(steps, features)
            yield FeedbackItem(item_id, created, label, sp, seq, version)

    def close(self) -> None:
        self.db.close()


def open_store(where: str | Path, holdout: float = 0.2, max_items: int = 1_000_000) -> FeedbackStore:
    """The feedback store in ``where``: a data directory (``SEQSERVE_DATA_DIR``) or a PostgreSQL URL."""
    return FeedbackStore(where, holdout=holdout, max_items=max_items)
