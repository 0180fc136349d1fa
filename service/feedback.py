"""Durable feedback: labelled sequences posted to ``POST /feedback``, kept for retraining (issue 10).

The store is one small interface (``FeedbackStore``). Its backend is an embedded SQLite file,
``feedback.db`` under ``SEQSERVE_DATA_DIR``:

* **Durable.** WAL journal, ``synchronous=FULL``, one transaction per request, committed before the
  response, so a 2xx means the items are on disk. The pragmas are read back when the store opens, and a
  store that does not hold them refuses to open. A busy timeout lets every API worker process write to the
  one file.
* **Split once.** Each item gets a random id at insert and, by a hash of that id, a split: ``train`` or
  ``holdout`` (``SEQSERVE_FEEDBACK_HOLDOUT``, default 0.2). The split is stored with the item and never
  changes, so retraining never sees a holdout item.
* **Bounded.** At most ``SEQSERVE_FEEDBACK_MAX_ITEMS`` items; beyond that ``add`` raises ``StoreFull``.

Sequences are stored as float32 bytes with their shape. ``python -m training feedback export`` writes the
store out as JSONL training data.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

SPLITS = ("train", "holdout")
SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    label TEXT NOT NULL,
    split TEXT NOT NULL CHECK (split IN ('train', 'holdout')),
    steps INTEGER NOT NULL,
    features INTEGER NOT NULL,
    sequence BLOB NOT NULL,
    model_version TEXT
)"""


class StoreError(RuntimeError):
    """The store cannot be opened with the guarantees it promises."""


class StoreFull(RuntimeError):
    """The store holds its maximum number of items."""


@dataclass(frozen=True)
class FeedbackItem:
    id: str
    created_at: float
    label: str
    split: str
    sequence: np.ndarray  # float32 [T, F]
    model_version: str | None


class FeedbackStore(Protocol):
    def add(self, items: list[tuple[np.ndarray, str]], model_version: str | None = None) -> list[FeedbackItem]: ...

    def counts(self) -> dict[str, int]: ...

    def items(self, split: str | None = None) -> Iterator[FeedbackItem]: ...

    def close(self) -> None: ...


def connect(path: Path, busy_timeout_ms: int = 10_000) -> tuple[sqlite3.Connection, dict]:
    """A connection in autocommit mode (explicit BEGIN/COMMIT) with WAL, synchronous=FULL and a busy
    timeout, and those pragmas as read back; ``StoreError`` if the file does not keep them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    c = sqlite3.connect(path, timeout=busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False)
    c.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=FULL")
    sync = c.execute("PRAGMA synchronous").fetchone()[0]
    pragmas = {
        "journal_mode": c.execute("PRAGMA journal_mode").fetchone()[0],
        "synchronous": {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[sync],
        "busy_timeout_ms": c.execute("PRAGMA busy_timeout").fetchone()[0],
    }
    if pragmas["journal_mode"] != "wal" or pragmas["synchronous"] != "FULL":
        c.close()
        raise StoreError(f"{path}: expected journal_mode=wal and synchronous=FULL, got {pragmas}")
    return c, pragmas


def assign_split(item_id: str, holdout: float) -> str:
    """``holdout`` for a ``holdout`` fraction of ids, by their SHA-256; the same id always gets the same split."""
    h = int.from_bytes(hashlib.sha256(item_id.encode()).digest()[:8], "big") / 2**64
    return "holdout" if h < holdout else "train"


class SQLiteStore:
    """The embedded backend: one file, any number of processes, one connection per process."""

    def __init__(
        self, path: str | Path, holdout: float = 0.2, max_items: int = 1_000_000, busy_timeout_ms: int = 10_000
    ) -> None:
        self.path, self.holdout, self.max_items = Path(path), holdout, max_items
        self._conn, self.pragmas = connect(self.path, busy_timeout_ms)
        self._lock = threading.Lock()  # one statement sequence at a time on this connection
        self._conn.execute(SCHEMA)

    def add(self, items: list[tuple[np.ndarray, str]], model_version: str | None = None) -> list[FeedbackItem]:
        """Store ``(sequence, label)`` pairs in one transaction; return them as stored (id, split)."""
        now = time.time()
        stored = []
        for seq, label in items:
            item_id = uuid.uuid4().hex
            arr = np.ascontiguousarray(seq, dtype="<f4")
            stored.append(FeedbackItem(item_id, now, label, assign_split(item_id, self.holdout), arr, model_version))
        rows = [
            (s.id, s.created_at, s.label, s.split, *s.sequence.shape, s.sequence.tobytes(), s.model_version)
            for s in stored
        ]
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                (n,) = self._conn.execute("SELECT count(*) FROM feedback").fetchone()
                if n + len(rows) > self.max_items:
                    raise StoreFull(f"the feedback store holds {n} items; its limit is {self.max_items} (max items)")
                self._conn.executemany("INSERT INTO feedback VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return stored

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._conn.execute("SELECT split, count(*) FROM feedback GROUP BY split").fetchall()
        return {split: dict(rows).get(split, 0) for split in SPLITS}

    def items(self, split: str | None = None) -> Iterator[FeedbackItem]:
        """Every item (or one split's), oldest first."""
        query = "SELECT id, created_at, label, split, steps, features, sequence, model_version FROM feedback"
        args: tuple = ()
        if split is not None:
            query, args = query + " WHERE split = ?", (split,)
        with self._lock:
            rows = self._conn.execute(query + " ORDER BY created_at, rowid", args).fetchall()
        for item_id, created, label, sp, steps, features, blob, version in rows:
            seq = np.frombuffer(blob, dtype="<f4").reshape(steps, features)
            yield FeedbackItem(item_id, created, label, sp, seq, version)

    def close(self) -> None:
        self._conn.close()


def open_store(data_dir: str | Path, holdout: float = 0.2, max_items: int = 1_000_000) -> FeedbackStore:
    """The feedback store under ``data_dir`` (``SEQSERVE_DATA_DIR``)."""
    return SQLiteStore(Path(data_dir) / "feedback.db", holdout=holdout, max_items=max_items)
