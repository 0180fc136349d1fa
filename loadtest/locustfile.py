"""Locust load test for a running seqserve: ``make loadtest`` (headless, 127.0.0.1 only, bounded in time).

Environment:
  LOADTEST_PROFILE   jv (the sequences as they are) | longtail (a tenth stretched 10-40x); default jv
  LOADTEST_DATA      a .ts/.jsonl file to send; default: JapaneseVowels if the served model takes 12 features,
                     else sequences generated from the model's /metadata (loadtest/workload.py)
  LOADTEST_STEPS, LOADTEST_STEP_USERS, LOADTEST_STEP_SECONDS: the bounded ramp (loadtest/locust_common.py)
  LOADTEST_SEQS_PER_REQUEST sequences per request (default 1)
"""

from __future__ import annotations

import os
import random

from locust import events, task
from locust.contrib.fasthttp import FastHttpUser

from loadtest import workload
from loadtest.locust_common import StepRamp, served_metadata  # noqa: F401  (Locust finds the shape here)

PROFILE = os.environ.get("LOADTEST_PROFILE", "jv")
PER_REQUEST = int(os.environ.get("LOADTEST_SEQS_PER_REQUEST", 1))
DATA = os.environ.get("LOADTEST_DATA") or None
BODIES: list[bytes] = []  # built at test start, once the served model's /metadata is known


@events.test_start.add_listener
def check_target(environment, **_: object) -> None:  # noqa: ANN001
    meta = served_metadata(environment.host)
    try:
        seqs = workload.sequences(PROFILE, meta=meta, data=DATA)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    longest = max(len(s) for s in seqs)
    if meta["max_length"] < longest:
        raise SystemExit(
            f"profile {PROFILE!r} sends up to {longest} steps but the model accepts {meta['max_length']}"
            f": export with --max-length {longest} (or use LOADTEST_PROFILE=jv)"
        )
    BODIES[:] = [
        workload.json_body(seqs[i : i + PER_REQUEST]) for i in range(0, len(seqs) - PER_REQUEST + 1, PER_REQUEST)
    ]
    print(f"loadtest: {workload.source(meta, DATA)[0]}, profile {PROFILE}, {len(BODIES)} request bodies")


class SeqUser(FastHttpUser):
    """Closed loop: each user sends its next request when the previous answer arrives."""

    @task
    def predict(self) -> None:
        body = random.choice(BODIES)
        with self.client.post(
            "/predict",
            data=body,
            headers={"content-type": "application/json"},
            catch_response=True,
            name=f"/predict [{PROFILE}]",
        ) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {r.text[:200]}")
            elif len(r.json()) != PER_REQUEST:
                r.failure("wrong number of results")
