"""Issue 29 (5): what every service's API shares, checked on each one's live server (by each task's tests): one
error body, unknown fields refused by name, a self-hosted reference of every route; and ``fuzz``, schemathesis
against a service's own /docs.json (tests/test_fuzz.py and the task rooms' tests)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKS = ",".join(
    [
        "not_a_server_error",
        "response_schema_conformance",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
    ]
)

SHAPE = {"code", "message", "field", "limit"}


def check_api_policy(url: str, route: str, body: dict, paths: tuple[str, ...]) -> None:
    r = httpx.post(url + route, json={**body, "surplus_field": 1}, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == SHAPE and error["code"] == "unknown_field" and error["field"] == "surplus_field", error
    assert "surplus_field" in error["message"]
    r = httpx.post(url + route, content=b'{"oops', headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 400 and set(r.json()["error"]) == SHAPE and r.json()["error"]["code"] == "invalid_json"
    assert "pydantic" not in r.text and "url" not in r.json()["error"]
    r = httpx.get(url + "/no/such/route")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    page = httpx.get(url + "/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text and "https://" not in page.text  # nothing loaded from elsewhere
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    root = httpx.get(url + "/")
    assert root.status_code == 307 and root.headers["location"] == "/docs"
    spec = httpx.get(url + "/docs.json").json()
    missing = [p for p in (*paths, "/docs", "/readyz", "/metrics") if p not in spec["paths"]]
    assert not missing, missing
    assert set(spec["components"]["schemas"]["Error"]["properties"]["error"]["properties"]) == SHAPE


def fuzz(url: str, examples: int) -> int:
    """Run schemathesis on every route but the admin ones, ``examples`` per route (or ``FUZZ_EXAMPLES`` when
    that is more: ``make fuzz``); fail the test with its report on any finding. The number of requests it
    generated."""
    examples = max(examples, int(os.environ.get("FUZZ_EXAMPLES") or 0))
    exe = Path(sys.executable).with_name("schemathesis")
    if not exe.exists():
        pytest.skip("schemathesis is not installed (pip install -e '.[dev]')")
    cmd = [str(exe), "run", f"{url}/docs.json", "--checks", CHECKS, "--max-examples", str(examples), "--seed", "1"]
    cmd += ["--exclude-path-regex", "^/admin", "--request-timeout", "30"]
    env = {**os.environ, "NO_COLOR": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    report = out.stdout + out.stderr
    assert out.returncode == 0, report[-6000:]
    found = re.search(r"(\d+) generated", report)
    assert found, report[-3000:]
    return int(found.group(1))
