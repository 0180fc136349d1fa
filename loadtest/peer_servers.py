"""The benchmark's peers, each serving the same model.onnx: NVIDIA Triton (nvidia-pytriton) and Ray Serve.

Each peer is installed into its own git-ignored venv under ``bench/venvs/`` (never a seqserve dependency), bound
to 127.0.0.1 and stopped by PID. Ray Serve runs inside a private network namespace (see ``loadtest.bench``)
because one of its ports binds every interface. Also here: the request encodings and the ``Server`` handle.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from loadtest import workload
from loadtest.procs import free_port, stop_process, wait_http

ROOT = Path(__file__).resolve().parents[1]
PEERS = Path(__file__).resolve().parent / "peers"
PY = sys.executable


def json_bodies(seqs: list[np.ndarray]) -> list[tuple[bytes, int]]:
    """seqserve and Ray Serve: ``{"sequences": [seq]}``, one sequence per request, 6 decimals."""
    return [(workload.json_body([s]), 1) for s in seqs]


def triton_bodies(seqs: list[np.ndarray]) -> list[tuple[bytes, int]]:
    """KServe v2 JSON for Triton, the same numbers."""
    out = []
    for s in seqs:
        s = np.round(s.astype(np.float64), 6)
        body = {
            "inputs": [
                {"name": "x", "shape": [1, len(s), s.shape[1]], "datatype": "FP32", "data": s.ravel().tolist()},
                {"name": "lengths", "shape": [1, 1], "datatype": "INT64", "data": [len(s)]},
            ]
        }
        out.append((json.dumps(body).encode(), 1))
    return out


def v2_binary_bodies(seqs: list[np.ndarray]) -> list[tuple[bytes, int, str]]:
    """KServe V2 with the binary tensor data extension (tritonclient's default): raw float32 in and out."""
    out = []
    for s in seqs:
        x, lengths = np.ascontiguousarray(s[None], "<f4").tobytes(), np.array([[len(s)]], "<i8").tobytes()
        head = json.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [1, len(s), s.shape[1]],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": len(x)},
                    },  # noqa: E501
                    {
                        "name": "lengths",
                        "shape": [1, 1],
                        "datatype": "INT64",
                        "parameters": {"binary_data_size": len(lengths)},
                    },  # noqa: E501
                ],
                "parameters": {"binary_data_output": True},
            }
        ).encode()
        headers = f"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: {len(head)}\r\n"
        out.append((head + x + lengths, 1, headers))
    return out


def file_stats(path: Path) -> dict:
    """Sum the per-process counter files ``<path>.<pid>`` a peer server writes after each batch."""
    out = {"batches": 0, "sequences": 0, "real_steps": 0, "padded_steps": 0}
    for f in path.parent.glob(path.name + ".*"):
        if f.suffix != ".tmp":
            for k, v in json.loads(f.read_text()).items():
                out[k] += v
    return out


def clear_stats(path: Path) -> None:
    for f in path.parent.glob(path.name + ".*"):
        f.unlink()


def ensure_venv(name: str, packages: list[str]) -> Path:
    """A git-ignored venv per peer under bench/venvs/ (created once, reused)."""
    venv = ROOT / "bench/venvs" / name
    marker = venv / ".installed"
    if marker.exists() and marker.read_text() == " ".join(packages):
        return venv / "bin/python"
    base_python = Path(sys.base_prefix) / "bin/python3"
    subprocess.run([str(base_python), "-m", "venv", "--clear", str(venv)], check=True)
    print(f"bench: installing {name} peer: {' '.join(packages)}", file=sys.stderr, flush=True)
    subprocess.run([str(venv / "bin/pip"), "install", "-q", *packages], check=True)
    marker.write_text(" ".join(packages))
    return venv / "bin/python"


class Server:
    """A started system: where to send requests, how to encode them, its batch counters, how to stop it."""

    def __init__(self, port: int, encode, stats, stop, paths: dict[str, str], encoders: dict | None = None) -> None:  # noqa: ANN001,E501
        self.port, self.encode, self.stats, self.stop, self.paths = port, encode, stats, stop, paths
        self.encoders = encoders or {}  # system -> body encoder, where it differs from ``encode``


def start_triton(art: Path, work: Path, args: argparse.Namespace) -> Server:
    import onnxruntime

    py = ensure_venv("triton", ["nvidia-pytriton==0.7.0", f"onnxruntime=={onnxruntime.__version__}", "numpy"])
    # The Python backend stub links libpython: point it at the lib dir of the interpreter this venv uses.
    libdir = subprocess.check_output(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"], text=True
    ).strip()
    env = {**os.environ, "LD_LIBRARY_PATH": f"{libdir}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
    port, grpc, metrics = free_port(), free_port(), free_port()
    stats = work / "triton_stats.json"
    clear_stats(stats)
    log = work / "triton.log"
    proc = subprocess.Popen(
        [
            str(py),
            str(PEERS / "triton_server.py"),
            "--model",
            str(art / "model.onnx"),
            "--port",
            str(port),
            "--grpc-port",
            str(grpc),
            "--metrics-port",
            str(metrics),
            "--instances",
            str(args.workers),
            "--threads",
            str(args.ort_threads),
            "--stats",
            str(stats),
            "--workspace",
            str(work / "triton_ws"),
        ],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/health/ready", 180, proc, log)
    except BaseException:
        stop_process(proc)
        raise
    return Server(
        port,
        triton_bodies,
        lambda: file_stats(stats),
        lambda: stop_process(proc),
        {"triton": "/v2/models/seqclassifier/infer"},
    )


def start_ray(art: Path, work: Path, args: argparse.Namespace) -> Server:
    """Only called inside the private network namespace (see ``run_ray_in_netns``)."""
    py = ROOT / "bench/venvs/ray/bin/python"
    port = free_port()
    stats = work / "ray_stats.json"
    clear_stats(stats)
    log = work / "ray.log"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    proc = subprocess.Popen(
        [
            str(py),
            str(PEERS / "ray_server.py"),
            "--model",
            str(art / "model.onnx"),
            "--port",
            str(port),
            "--replicas",
            str(args.workers),
            "--threads",
            str(args.ort_threads),
            "--stats",
            str(stats),
        ],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    features = json.loads((art / "metadata.json").read_text())["feature_dim"]
    body = json.dumps({"sequences": [[[0.0] * features]]}).encode()
    deadline = time.monotonic() + 180
    while True:
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=body)
            if urllib.request.urlopen(req, timeout=5).status == 200:
                break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError(f"Ray Serve did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    return Server(
        port, json_bodies, lambda: file_stats(stats), lambda: stop_process(proc, timeout=30), {"ray-serve": "/predict"}
    )
