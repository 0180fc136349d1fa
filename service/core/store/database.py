"""The service database (feedback, the champion pointer, retraining jobs): one small wrapper, two backends.

``Database(where)``: ``where`` is a data directory (an embedded SQLite file ``feedback.db`` in it, the
default: ``SEQSERVE_DATA_DIR``) or a ``postgresql://`` URL (``SEQSERVE_DATABASE_URL``, for deployments with
several pods, where a file on one node cannot serve). The modules above it write SQL once, with ``?``
placeholders and portable types, and get:

* **durability, checked**: SQLite runs with WAL and ``synchronous=FULL``; PostgreSQL needs ``fsync`` and
  ``synchronous_commit`` on. Both are read back at open, and a database without them is refused (``StoreError``);
* **exclusive transactions** for read-modify-write steps (``transaction(lock=table)``): SQLite's
  ``BEGIN IMMEDIATE`` (the database write lock), PostgreSQL's ``LOCK TABLE ... SHARE ROW EXCLUSIVE``;
* one connection per process, used by one thread at a time.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class StoreError(RuntimeError):
    """The database cannot be opened with the guarantees it promises."""


def is_url(where: str | Path) -> bool:
    return str(where).startswith(("postgresql://", "postgres://"))


class Database:
    def __init__(self, where: str | Path, busy_timeout_ms: int = 10_000) -> None:
        self.lock = threading.RLock()
        if is_url(where):
            import psycopg

            self.dialect = "postgresql"
            self.errors: tuple[type[BaseException], ...] = (psycopg.Error, OSError)
            self.conn: Any = psycopg.connect(str(where), autocommit=True)
            settings = {k: self.conn.execute(f"SHOW {k}").fetchone()[0] for k in ("fsync", "synchronous_commit")}
            self.durability = settings
            if settings != {"fsync": "on", "synchronous_commit": "on"}:
                raise StoreError(f"PostgreSQL: expected fsync=on and synchronous_commit=on, got {settings}")
        else:
            self.dialect = "sqlite"
            self.errors = (sqlite3.Error, OSError)
            path = Path(where) / "feedback.db"
            path.parent.mkdir(parents=True, exist_ok=True)
            c = sqlite3.connect(path, timeout=busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False)
            c.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=FULL")
            sync = c.execute("PRAGMA synchronous").fetchone()[0]
            self.durability = {
                "journal_mode": c.execute("PRAGMA journal_mode").fetchone()[0],
                "synchronous": {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[sync],
                "busy_timeout_ms": c.execute("PRAGMA busy_timeout").fetchone()[0],
            }
            self.conn = c
            if self.durability["journal_mode"] != "wal" or self.durability["synchronous"] != "FULL":
                c.close()
                raise StoreError(f"{path}: expected journal_mode=wal and synchronous=FULL, got {self.durability}")

    def execute(self, sql: str, args: tuple = ()) -> Any:
        """Run one statement (``?`` placeholders); returns the cursor."""
        if self.dialect == "postgresql":
            sql = sql.replace("?", "%s")
        with self.lock:
            return self.conn.execute(sql, args)

    def create(self, ddl: str) -> None:
        """``CREATE TABLE IF NOT EXISTS`` in portable types (REAL and BLOB become DOUBLE PRECISION and BYTEA)."""
        if self.dialect == "sqlite":
            self.execute(ddl)
            return
        ddl = ddl.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
        ddl = ddl.replace(" REAL", " DOUBLE PRECISION").replace(" BLOB", " BYTEA")
        with self.transaction():
            self.execute("SELECT pg_advisory_xact_lock(7262)")  # processes starting together create it once
            self.execute(ddl)

    @contextmanager
    def transaction(self, lock: str | None = None) -> Iterator[None]:
        """One transaction; with ``lock``, exclusive against other writers of that table until it ends."""
        with self.lock:
            if self.dialect == "sqlite":
                self.conn.execute("BEGIN IMMEDIATE" if lock else "BEGIN")
            else:
                self.conn.execute("BEGIN")
                if lock:
                    self.conn.execute(f"LOCK TABLE {lock} IN SHARE ROW EXCLUSIVE MODE")
            try:
                yield
            except BaseException:
                try:
                    self.conn.execute("ROLLBACK")
                except self.errors:  # the database rolled back already (e.g. SQLite on a full disk)
                    pass
                raise
            try:
                self.conn.execute("COMMIT")
            except BaseException:
                try:
                    self.conn.execute("ROLLBACK")
                except self.errors:
                    pass
                raise

    def close(self) -> None:
        self.conn.close()


def add_database_arg(parser: Any) -> None:
    """The CLIs' ``--data-dir``: where the service database is, as the service finds it."""
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("SEQSERVE_DATABASE_URL") or os.environ.get("SEQSERVE_DATA_DIR") or ".seqserve",
        help="service database: a data directory or a postgresql:// URL (default: as the service)",
    )


def database_exists(where: str | Path) -> bool:
    """A PostgreSQL URL always names a database; a data directory holds one once something was stored."""
    return is_url(where) or (Path(where) / "feedback.db").exists()
