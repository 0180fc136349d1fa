"""Start and stop the processes tests and benchmarks need: always on 127.0.0.1, always stopped by PID."""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

GRACE_S = 10  # as `make serve`: in-flight requests get this long after SIGTERM (Kubernetes gives the pod 30 s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Poll ``url`` until it answers 200; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was ready\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s")


def start_bentoml(
    root: Path,
    env: dict[str, str],
    log: Path,
    port: int | None = None,
    timeout: float = 120.0,
    target: str = "service.service:SeqServe",
    grace_s: int = GRACE_S,
) -> tuple[subprocess.Popen, str]:
    """``bentoml serve TARGET`` (the classifier; ``service.generate_service:SeqGenerate``, the language model) on
    127.0.0.1; returns (process, base url) once ready. On SIGTERM it drains: no new connections, requests in
    flight get ``grace_s`` seconds to finish, then they (and open streams) are cut and it exits."""
    port = port or free_port()
    full_env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", **env}
    script = Path(sys.executable).with_name("bentoml")  # a venv's entry point, else the module (GPU machine)
    bentoml = [str(script)] if script.exists() else [sys.executable, "-m", "bentoml"]
    fh = log.open("w")
    proc = subprocess.Popen(
        [
            *bentoml,
            "serve",
            target,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--timeout-graceful-shutdown",
            str(grace_s),
        ],
        cwd=root,
        env=full_env,
        stdout=fh,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/readyz", timeout, proc, log)
    except BaseException:
        stop_process(proc)
        raise
    return proc, url


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, theirs, ...), from /proc: BentoML starts each worker in a session
    of its own, so the arbiter's process group does not reach them."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, todo = [], [pid]
    while todo:
        here = todo.pop()
        kids = [c for c, p in parent.items() if p == here]
        found += kids
        todo += kids
    return found


def kill_tree(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal the process we started and every process below it at once (no clean shutdown with SIGKILL)."""
    for pid in [proc.pid, *descendants(proc.pid)]:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def stop_process(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM the process we started; if it or any of its workers lingers, SIGKILL them."""
    workers = descendants(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc)
            proc.wait(5)
    for pid in workers + descendants(proc.pid):  # workers that outlived the arbiter
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def machine() -> dict:
    import onnxruntime

    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    mem = next(
        (
            int(ln.split()[1]) // 1024 // 1024
            for ln in Path("/proc/meminfo").read_text().splitlines()
            if ln.startswith("MemTotal")
        ),
        None,
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem,
        "gpu": None,
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
