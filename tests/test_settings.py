"""The one settings object: every SEQSERVE_* variable read once; a bad value is an error naming its variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from service.core.settings import BATCHING_DEFAULTS, Batching, Settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SEQSERVE_DEVICE", "SEQSERVE_WORKERS", "SEQSERVE_MODEL_WORKERS", "SEQSERVE_MAX_LENGTH"):
        monkeypatch.delenv(name, raising=False)
    s = Settings()
    assert (s.device, s.workers, s.model_workers, s.max_length) == ("auto", 2, 1, 0)
    assert s.accepted_max_length(4096) == 4096


def test_values_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQSERVE_DEVICE", "CUDA")
    monkeypatch.setenv("SEQSERVE_MODEL_WORKERS", "3")
    monkeypatch.setenv("SEQSERVE_MIN_PADDING_EFFICIENCY", "0.5")
    monkeypatch.setenv("SEQSERVE_MAX_LENGTH", "64")
    s = Settings()
    assert (s.device, s.model_workers, s.min_efficiency) == ("cuda", 3, 0.5)
    assert s.accepted_max_length(4096) == 64


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("SEQSERVE_WORKERS", "two", "SEQSERVE_WORKERS='two': expected an integer"),
        ("SEQSERVE_MODEL_WORKERS", "0", "SEQSERVE_MODEL_WORKERS=0: must be >= 1"),
        ("SEQSERVE_MAX_LENGTH", "-5", "SEQSERVE_MAX_LENGTH=-5: must be >= 0"),
        ("SEQSERVE_MIN_PADDING_EFFICIENCY", "high", "SEQSERVE_MIN_PADDING_EFFICIENCY='high': expected a number"),
        ("SEQSERVE_DEVICE", "tpu", "SEQSERVE_DEVICE='tpu': must be auto, cpu or cuda"),
        ("SEQSERVE_SHAPE_BUCKETS", "yes", "SEQSERVE_SHAPE_BUCKETS='yes': must be auto, on or off"),
    ],
)
def test_a_bad_value_names_its_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError) as e:
        Settings()
    assert str(e.value) == message


def test_batching_follows_the_provider_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SEQSERVE_STEP_BUDGET", "SEQSERVE_MAX_SUB_BATCH", "SEQSERVE_MIN_PADDING_EFFICIENCY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SEQSERVE_SHAPE_BUCKETS", "auto")
    s = Settings()
    assert s.batching(cuda=False) == BATCHING_DEFAULTS[False] == Batching(8192, 128, 0.85, False)
    assert s.batching(cuda=True) == BATCHING_DEFAULTS[True] == Batching(65536, 512, 0.0, True)
    monkeypatch.setenv("SEQSERVE_MIN_PADDING_EFFICIENCY", "0")  # an explicit 0 is kept on the CPU too
    monkeypatch.setenv("SEQSERVE_MAX_SUB_BATCH", "32")
    monkeypatch.setenv("SEQSERVE_SHAPE_BUCKETS", "off")
    assert Settings().batching(cuda=True) == Batching(65536, 32, 0.0, False)
    assert Settings().batching(cuda=False) == Batching(8192, 32, 0.0, False)


@pytest.mark.parametrize(("priority", "expect"), [("low", "nice 10"), ("idle", "idle"), ("normal", "nice 0")])
def test_cpu_priority_reaches_the_threads_a_service_starts_afterwards(priority: str, expect: str) -> None:
    """SEQSERVE_CPU_PRIORITY in a fresh process (as a service worker): start_process takes it, and a thread
    started afterwards (ONNX Runtime's, the scheduler's) runs with it."""
    code = (
        "import os, threading\n"
        "from service.core.app import start_process\n"
        "from service.core.settings import Settings\n"
        "start_process(Settings())\n"
        "seen = []\n"
        "def look():\n"
        "    idle = os.sched_getscheduler(0) == os.SCHED_IDLE\n"
        "    seen.append('idle' if idle else f'nice {os.nice(0)}')\n"
        "t = threading.Thread(target=look)\n"
        "t.start(); t.join()\n"
        "print(seen[0])\n"
    )
    env = {**os.environ, "SEQSERVE_CPU_PRIORITY": priority}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == expect


def test_cpus_pin_the_process_and_its_later_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """SEQSERVE_CPUS in a fresh process: start_process keeps it (and the threads it starts) to those CPUs, and
    ONNX Runtime's thread count follows (available_cpus); CPUs that are not there are refused, naming the
    variable."""
    code = (
        "import os, threading\n"
        "from service.core.app import start_process\n"
        "from service.core.runtime import available_cpus\n"
        "from service.core.settings import Settings\n"
        "start_process(Settings())\n"
        "seen = []\n"
        "t = threading.Thread(target=lambda: seen.append(sorted(os.sched_getaffinity(0))))\n"
        "t.start(); t.join()\n"
        "print(seen[0], available_cpus())\n"
    )
    first = min(os.sched_getaffinity(0))
    env = {**os.environ, "SEQSERVE_CPUS": str(first)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == f"[{first}] 1"
    env["SEQSERVE_CPUS"] = "4096"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "SEQSERVE_CPUS" in out.stderr
    monkeypatch.setenv("SEQSERVE_CPUS", "two")
    with pytest.raises(ValueError, match="SEQSERVE_CPUS"):
        Settings()
