"""Schema fuzzing (issue 13): schemathesis against each service's own /docs.json, every route but the admin
ones (the V2 routes and /generate included): zero 5xx and zero responses that break the documented schema
(status codes, content types, headers, bodies). CI runs >= 1000 generated requests; ``make fuzz`` runs more
(``FUZZ_EXAMPLES``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from api_policy import fuzz

from loadtest.procs import start_bentoml, stop_process

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))


def test_classifier_api_survives_schema_fuzzing(server: str) -> None:
    assert fuzz(server, EXAMPLES) >= 1000


def test_generation_api_survives_schema_fuzzing(lm_artifact: Path, tmp_path: Path) -> None:
    env = {
        "SEQSERVE_MODEL": str(lm_artifact),
        "BENTOML_HOME": str(tmp_path / "home"),
        "SEQSERVE_DATA_DIR": str(tmp_path),
    }
    env |= {"SEQSERVE_GENERATE_MAX_NEW_TOKENS": "48", "SEQSERVE_GENERATE_MAX_BEAMS": "4"}  # quick generations
    proc, url = start_bentoml(ROOT, env, tmp_path / "log.txt", target="service.generate_service:SeqGenerate")
    try:
        assert fuzz(url, max(EXAMPLES * 3, 150)) >= 300
    finally:
        stop_process(proc)
    log = (tmp_path / "log.txt").read_text()
    assert "Traceback" not in log, log[-3000:]


if not Path(sys.executable).with_name("schemathesis").exists():
    pytestmark = pytest.mark.skip(reason="schemathesis is not installed (pip install -e '.[dev]')")
