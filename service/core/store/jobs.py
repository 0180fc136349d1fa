"""Retraining jobs: queued by the service, run by a separate trainer (issue 10).

The serving image has neither torch nor the training code, so the service never retrains. Its admin routes
(``POST /admin/retrain``, the Alertmanager webhook ``POST /admin/alert``) and the CLI only insert a queued job
in the service database (``$SEQSERVE_DATA_DIR/feedback.db``). A trainer (``python -m training worker``: a
local process, a Kubernetes Job or CronJob) claims one job at a time and writes its state back. Every API
worker and every pod therefore reads the same state (``GET /admin/retrain``).

* ``enqueue`` returns the job already queued or running if there is one: repeated triggers (an alert that
  keeps firing) coalesce into one job.
* ``claim`` moves the oldest queued job to ``running`` inside an exclusive transaction (the database lock),
  so two trainers never run the same job. A job left ``running`` longer than ``stale_after_s`` (its trainer
  died) is marked ``failed`` first.
* ``finish`` records the outcome: promoted, rejected, skipped or failed, with the retrain report.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from service.core.store.database import Database

STATES = ("queued", "running", "promoted", "rejected", "skipped", "failed")
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'promoted', 'rejected', 'skipped', 'failed')),
    trigger TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    reason TEXT,
    report TEXT
)"""
COLUMNS = "id, state, trigger, created_at, started_at, finished_at, reason, report"


@dataclass(frozen=True)
class Job:
    id: int
    state: str
    trigger: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    reason: str | None
    report: dict | None

    @classmethod
    def from_row(cls, row: tuple) -> Job:
        *head, report = row
        return cls(*head, json.loads(report) if report else None)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class JobQueue:
    def __init__(self, where: str | Path) -> None:
        self.db = Database(where)
        self.db.create(SCHEMA)

    def _one(self, sql: str, args: tuple = ()) -> Job | None:
        row = self.db.execute(sql, args).fetchone()
        return Job.from_row(row) if row else None

    def enqueue(self, trigger: str) -> tuple[Job, bool]:
        """A queued job for ``trigger`` and True, or the job already queued/running and False."""
        with self.db.transaction(lock="jobs"):
            open_job = self._one(f"SELECT {COLUMNS} FROM jobs WHERE state IN ('queued', 'running') ORDER BY id LIMIT 1")
            if open_job is not None:
                return open_job, False
            new = self._one(
                f"INSERT INTO jobs (state, trigger, created_at) VALUES ('queued', ?, ?) RETURNING {COLUMNS}",
                (trigger, time.time()),
            )
        assert new is not None
        return new, True

    def claim(self, stale_after_s: float = 6 * 3600) -> Job | None:
        """The oldest queued job, now ``running`` and owned by the caller; None if nothing is queued."""
        now = time.time()
        with self.db.transaction(lock="jobs"):
            self.db.execute(
                "UPDATE jobs SET state = 'failed', finished_at = ?, reason = 'its trainer stopped reporting' "
                "WHERE state = 'running' AND started_at < ?",
                (now, now - stale_after_s),
            )
            job = self._one(f"SELECT {COLUMNS} FROM jobs WHERE state = 'queued' ORDER BY id LIMIT 1")
            if job:
                self.db.execute("UPDATE jobs SET state = 'running', started_at = ? WHERE id = ?", (now, job.id))
        return self.get(job.id) if job else None

    def finish(self, job_id: int, state: str, reason: str | None = None, report: dict | None = None) -> Job:
        if state not in STATES[2:]:
            raise ValueError(f"a finished job is one of {STATES[2:]}, not {state!r}")
        self.db.execute(
            "UPDATE jobs SET state = ?, finished_at = ?, reason = ?, report = ? WHERE id = ?",
            (state, time.time(), reason, json.dumps(report) if report is not None else None, job_id),
        )
        job = self.get(job_id)
        assert job is not None
        return job

    def get(self, job_id: int) -> Job | None:
        return self._one(f"SELECT {COLUMNS} FROM jobs WHERE id = ?", (job_id,))

    def latest(self) -> Job | None:
        """The current job if one is queued or running, else the last one."""
        return self._one(f"SELECT {COLUMNS} FROM jobs ORDER BY state IN ('queued', 'running') DESC, id DESC LIMIT 1")

    def close(self) -> None:
        self.db.close()
