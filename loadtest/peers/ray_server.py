"""Ray Serve serving the same model.onnx with ONNX Runtime behind ``@serve.batch``.

Run inside the Ray venv (and, because a Ray replica's gRPC port binds every interface, inside a private
network namespace with only loopback: the benchmark does ``unshare -n``):
``python ray_server.py --model model.onnx --port P --stats stats.json``.
The batch handler pads each batch to its longest sequence, as Ray Serve users do. Body and answer formats
match seqserve's ``/predict`` (one object per sequence).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import ray
from ray import serve
from starlette.requests import Request


@serve.deployment
class SeqModel:
    def __init__(self, model: str, threads: int, stats: str, max_batch: int, wait_s: float) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        meta = json.loads((Path(model).parent / "metadata.json").read_text())
        self.classes, self.version, self.F = meta["classes"], meta["model_version"], int(meta["feature_dim"])
        self.stats_path = stats
        self.stats = {"batches": 0, "sequences": 0, "real_steps": 0, "padded_steps": 0}
        self.infer.set_max_batch_size(max_batch)
        self.infer.set_batch_wait_timeout_s(wait_s)

    @serve.batch(max_batch_size=256, batch_wait_timeout_s=0.002)
    async def infer(self, seqs: list[np.ndarray]) -> list[dict]:
        lens = np.array([len(s) for s in seqs], np.int64)
        x = np.zeros((len(seqs), int(lens.max()), self.F), np.float32)  # pad to the longest in the batch
        for i, s in enumerate(seqs):
            x[i, : len(s)] = s
        probs, att = self.sess.run(None, {"x": x, "lengths": lens})
        st = self.stats
        st["batches"] += 1
        st["sequences"] += len(seqs)
        st["real_steps"] += int(lens.sum())
        st["padded_steps"] += int(x.shape[0] * x.shape[1])
        own = f"{self.stats_path}.{os.getpid()}"  # one file per replica process; the benchmark sums them
        Path(own + ".tmp").write_text(json.dumps(st))
        os.replace(own + ".tmp", own)
        return [
            {
                "label": self.classes[int(p.argmax())],
                "probabilities": dict(zip(self.classes, p.tolist())),
                "attention": a[:n].tolist(),
                "model_version": self.version,
            }
            for p, a, n in zip(probs, att, lens)
        ]

    async def __call__(self, request: Request) -> list[dict]:
        body = await request.json()
        seq = np.asarray(body["sequences"][0], dtype=np.float32)
        return [await self.infer(seq)]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--max-batch", type=int, default=256)
    p.add_argument("--wait-ms", type=float, default=2.0)
    p.add_argument("--max-ongoing", type=int, default=512, help="Ray's default (5) would cap batches at 5")
    p.add_argument("--stats", required=True)
    args = p.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    app = SeqModel.options(
        num_replicas=args.replicas, max_ongoing_requests=args.max_ongoing, ray_actor_options={"num_cpus": 0}
    ).bind(args.model, args.threads, args.stats, args.max_batch, args.wait_ms / 1000)
    serve.run(app, route_prefix="/predict", blocking=False)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    print("ray-serve ready", flush=True)
    while not stop:
        time.sleep(0.2)
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
