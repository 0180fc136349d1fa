"""``python -m training worker``: the trainer that runs queued retraining jobs (``service.core.store.jobs``).

It claims one job at a time from the service database, runs the classifier's retraining
(``training.tasks.classify.retrain``: feedback is labelled sequences) and writes the outcome back to the job
(``GET /admin/retrain`` shows it). A job requested explicitly (``POST /admin/retrain``, trigger ``api``)
retrains at once. Jobs from the drift alert or a schedule (``alert``, ``cron``) respect
``--min-new-items`` and ``--cooldown-s``, so a drift alert that keeps firing cannot retrain in a loop. Run it
as a local process, a Kubernetes Job, or a CronJob: ``python -m training worker --enqueue cron --once``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

from training.tasks.classify.retrain import add_retrain_args, retrain


def add_worker_args(p: argparse.ArgumentParser) -> None:
    add_retrain_args(p)
    p.add_argument("--once", action="store_true", help="run at most one job, then exit")
    p.add_argument("--enqueue", default="", help="queue a job with this trigger first (e.g. cron)")
    p.add_argument("--poll-s", type=float, default=10.0, help="seconds between looks at the queue")
    p.add_argument("--runs-dir", default="runs", help="each job works in RUNS_DIR/retrain-job-<id>")


def run_job(queue, job, args: argparse.Namespace) -> str:  # noqa: ANN001 - service.core.store.jobs types
    rargs = copy.copy(args)
    rargs.force = args.force or job.trigger == "api"
    rargs.out = str(Path(args.runs_dir) / f"retrain-job-{job.id}")
    try:
        report = retrain(rargs)
    except Exception as e:  # noqa: BLE001 - the job records any failure; the champion is untouched
        written = Path(rargs.out) / "report.json"  # retrain writes it for every failure it can see
        report = json.loads(written.read_text()) if written.exists() else None
        queue.finish(job.id, "failed", f"{type(e).__name__}: {e}", report)
        return "failed"
    queue.finish(job.id, report["state"], report.get("reason"), report)
    return report["state"]


def worker(args: argparse.Namespace) -> None:
    from service.core.store.jobs import JobQueue

    queue = JobQueue(args.data_dir)
    if args.enqueue:
        job, new = queue.enqueue(args.enqueue)
        print(f"worker: job {job.id} {'queued' if new else 'already ' + job.state}", file=sys.stderr)
    while True:
        job = queue.claim()
        if job is not None:
            print(f"worker: job {job.id} ({job.trigger}) running", file=sys.stderr)
            print(f"worker: job {job.id} {run_job(queue, job, args)}", file=sys.stderr)
        if args.once:
            return
        if job is None:
            time.sleep(args.poll_s)
