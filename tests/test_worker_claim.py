"""Issue 29 (8): a retraining job nobody runs is no longer silent: /admin/retrain says no worker claimed it."""

from __future__ import annotations

from pathlib import Path

from service.core.admin import unclaimed
from service.core.store.jobs import JobQueue


def test_a_job_waiting_past_the_claim_time_says_no_worker_runs(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path)
    job, _ = queue.enqueue("api")
    assert unclaimed(job, 60.0, now=job.created_at + 5) is None
    warning = unclaimed(job, 60.0, now=job.created_at + 75)
    assert warning and "no worker has claimed this job in 75 s" in warning and "make worker" in warning
    running = queue.claim()
    assert running is not None and unclaimed(running, 60.0, now=job.created_at + 500) is None
