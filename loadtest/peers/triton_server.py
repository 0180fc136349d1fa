"""NVIDIA Triton (via nvidia-pytriton) serving the same model.onnx with ONNX Runtime in a ``@batch`` function.

Run inside the Triton venv: ``python triton_server.py --model model.onnx --port P --stats stats.json``.
Triton's dynamic batcher only groups requests whose input shapes are equal (ragged batching is not exposed by
PyTriton), so the handler pads whatever batch it gets to its longest sequence, as Triton users must.
Counts batches, sequences, real and padded steps into ``--stats`` (JSON) for the benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--metrics-port", type=int, required=True)
    p.add_argument("--threads", type=int, default=1, help="ORT intra-op threads per instance")
    p.add_argument("--instances", type=int, default=2)
    p.add_argument("--max-batch", type=int, default=256)
    p.add_argument("--queue-delay-us", type=int, default=2000)
    p.add_argument("--stats", required=True)
    p.add_argument("--workspace", required=True)
    args = p.parse_args()

    meta = json.loads((Path(args.model).parent / "metadata.json").read_text())
    F, C = int(meta["feature_dim"]), len(meta["classes"])
    stats = {"batches": 0, "sequences": 0, "real_steps": 0, "padded_steps": 0}
    lock = threading.Lock()

    def make_infer():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])

        @batch
        def infer(x: np.ndarray, lengths: np.ndarray) -> dict:
            lens = lengths.reshape(-1).astype(np.int64)
            xb = np.zeros((x.shape[0], int(lens.max()), F), np.float32)  # pad to the longest in the batch
            for i, n in enumerate(lens):
                xb[i, :n] = x[i, :n]
            probs, att = sess.run(None, {"x": xb, "lengths": lens})
            with lock:
                stats["batches"] += 1
                stats["sequences"] += len(lens)
                stats["real_steps"] += int(lens.sum())
                stats["padded_steps"] += int(xb.shape[0] * xb.shape[1])
                own = f"{args.stats}.{os.getpid()}"  # one file per process; the benchmark sums them
                Path(own + ".tmp").write_text(json.dumps(stats))
                os.replace(own + ".tmp", own)
            return {"probabilities": probs, "attention": att}

        return infer

    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        metrics_address="127.0.0.1",
        metrics_port=args.metrics_port,
        log_verbose=0,
    )
    with Triton(config=config, workspace=args.workspace) as triton:
        triton.bind(
            model_name="seqclassifier",
            infer_func=[make_infer() for _ in range(args.instances)],
            inputs=[
                Tensor(name="x", dtype=np.float32, shape=(-1, F)),
                Tensor(name="lengths", dtype=np.int64, shape=(1,)),
            ],
            outputs=[
                Tensor(name="probabilities", dtype=np.float32, shape=(C,)),
                Tensor(name="attention", dtype=np.float32, shape=(-1,)),
            ],
            config=ModelConfig(
                max_batch_size=args.max_batch, batcher=DynamicBatcher(max_queue_delay_microseconds=args.queue_delay_us)
            ),
            strict=False,
        )
        signal.signal(signal.SIGTERM, lambda *_: triton.stop())
        triton.serve()


if __name__ == "__main__":
    main()
