"""What the Locust files share: the bounded step ramp and the loopback-only check that reads the model's /metadata.

Environment (both files):
  LOADTEST_STEPS         number of user steps in the ramp (default 4)
  LOADTEST_STEP_USERS    users added per step (default 16)
  LOADTEST_STEP_SECONDS  seconds per step (default 10); the test stops by itself after STEPS x STEP_SECONDS
"""

from __future__ import annotations

import json
import os
import urllib.request
from urllib.parse import urlparse

from locust import LoadTestShape

STEPS = int(os.environ.get("LOADTEST_STEPS", 4))
STEP_USERS = int(os.environ.get("LOADTEST_STEP_USERS", 16))
STEP_SECONDS = float(os.environ.get("LOADTEST_STEP_SECONDS", 10))


def served_metadata(host: str | None) -> dict:
    """The served model's /metadata; a host other than loopback ends the test before any request."""
    if urlparse(host or "").hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"load tests hit loopback only; --host is {host!r}")
    with urllib.request.urlopen(host + "/metadata", timeout=30) as r:
        return json.loads(r.read())


class StepRamp(LoadTestShape):
    """STEP_USERS more users every STEP_SECONDS, STEPS times; then stop."""

    def tick(self) -> tuple[int, float] | None:
        step = int(self.get_run_time() // STEP_SECONDS)
        if step >= STEPS:
            return None
        return (step + 1) * STEP_USERS, float(STEP_USERS)
