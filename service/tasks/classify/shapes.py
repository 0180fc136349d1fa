"""The classifier's fixed call shapes on CUDA: one bound session per rung of a ``ShapeLadder``
(``service.core.batching.shapes``: why, and how a batch is planned over the rungs).

* ``ShapedSessions`` opens the sessions (the provider and options of the checked session), binds each one's
  inputs (``x``, ``lengths``) and outputs (``probabilities``, ``attention``) once to buffers of its shape (IO
  binding: no allocation per call), warms it and checks it against the already checked session: the first
  sequences of the artifact's reference set, batched in the shape and alone in it, within ``CHECK_TOLERANCE``.
  It reports seconds and GPU memory per shape, and refuses a ladder that leaves less than ``GPU_RESERVE`` of the
  GPU's memory free, naming the setting.
* ``SEQSERVE_CUDA_GRAPH=1`` asks ORT to capture each shape's call as a CUDA graph (replayed on later calls);
  a shape whose capture fails keeps a plain session, and the report says why.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from service.core.artifact import Artifact, ReferenceMismatch
from service.core.batching.shapes import GPU_RESERVE, VARIABLE, ShapeLadder, gpu_memory_mib
from service.core.runtime import CHECK_TOLERANCE, CUDA, CUDA_OPTIONS, SessionInfo, session_options

log = logging.getLogger("seqserve")


@dataclass
class _Shape:
    session: ort.InferenceSession
    binding: ort.IOBinding
    x: ort.OrtValue
    lengths: ort.OrtValue
    probs: ort.OrtValue
    attention: ort.OrtValue
    host_x: np.ndarray  # [B, T, F] staging buffer
    host_lengths: np.ndarray
    lock: threading.Lock = field(default_factory=threading.Lock)
    graph: bool = False


class ShapedSessions:
    """One bound session per rung of a ``ShapeLadder`` (see module doc). ``run`` is thread-safe."""

    def __init__(
        self,
        artifact: Artifact,
        base: SessionInfo,
        ladder: ShapeLadder,
        threads: int,
        spin: bool = True,
        cuda_graph: bool = False,
    ) -> None:
        self.ladder = ladder
        self.device = "cuda" if base.provider == CUDA else "cpu"
        self.feature_dim = int(artifact.meta.feature_dim)
        self.classes = len(artifact.meta.classes)
        self.report: dict = {"variable": VARIABLE, "batches": list(ladder.batches), "steps": list(ladder.steps)}
        self.report["shapes"] = shapes = []
        self._shapes: dict[tuple[int, int], _Shape] = {}
        reference = _reference_inputs(artifact, base.session, ladder.steps)
        started = time.perf_counter()
        for b, t in ladder.shapes:
            before = gpu_memory_mib() if self.device == "cuda" else None
            t0 = time.perf_counter()
            entry, why = None, None
            if cuda_graph and self.device == "cuda":
                try:
                    entry = self._open(artifact, b, t, threads, spin, graph=True)
                    diff = self._check(entry, b, t, reference)
                except Exception as e:  # noqa: BLE001 - capture unsupported for this graph: a plain session
                    entry, why = None, f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
            if entry is None:
                try:
                    entry = self._open(artifact, b, t, threads, spin, graph=False)
                except Exception as e:  # noqa: BLE001 - out of memory, most often
                    raise RuntimeError(f"{VARIABLE}: could not open a session of shape [{b}, {t}]: {e}") from None
                diff = self._check(entry, b, t, reference)
            self._shapes[(b, t)] = entry
            row = {"shape": [b, t], "seconds": round(time.perf_counter() - t0, 3), "cuda_graph": entry.graph, **diff}
            if why:
                row["cuda_graph_failed"] = why
            after = gpu_memory_mib() if self.device == "cuda" else None
            if before and after:
                row["gpu_mib"] = after[0] - before[0]
                if after[1] - after[0] < GPU_RESERVE * after[1]:
                    raise RuntimeError(
                        f"{VARIABLE}: the ladder does not fit: after shape [{b}, {t}] only {after[1] - after[0]} "
                        f"of {after[1]} MiB of GPU memory are free (at least {GPU_RESERVE:.0%} must stay free); "
                        "give fewer or smaller shapes, or fewer SEQSERVE_MODEL_WORKERS (each holds its own sessions)"
                    )
            shapes.append(row)
        self.report["load_seconds"] = round(time.perf_counter() - started, 2)
        mem = [s["gpu_mib"] for s in shapes if "gpu_mib" in s]
        self.report["gpu_mib"] = sum(mem) if mem else None
        log.info(
            "seqserve: %d fixed call shapes on %s in %.1f s (%s MiB of GPU memory)",
            len(shapes),
            self.device,
            self.report["load_seconds"],
            self.report["gpu_mib"],
        )

    def _open(self, artifact: Artifact, b: int, t: int, threads: int, spin: bool, graph: bool) -> _Shape:
        opts = session_options(threads, quiet=self.device == "cuda", spin=spin)
        if self.device == "cuda":
            options = {**CUDA_OPTIONS, **({"enable_cuda_graph": "1"} if graph else {})}
            providers: list = [(CUDA, options), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        sess = ort.InferenceSession(str(artifact.onnx_path), opts, providers=providers)
        if self.device == "cuda" and sess.get_providers()[0] != CUDA:
            raise RuntimeError("the shaped session did not start on CUDA")
        dev = self.device

        def value(shape: tuple[int, ...], dtype: type) -> ort.OrtValue:
            return ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, dev, 0)

        x, lengths = value((b, t, self.feature_dim), np.float32), value((b,), np.int64)
        probs, attention = value((b, self.classes), np.float32), value((b, t), np.float32)
        binding = sess.io_binding()
        binding.bind_ortvalue_input("x", x)
        binding.bind_ortvalue_input("lengths", lengths)
        binding.bind_ortvalue_output("probabilities", probs)
        binding.bind_ortvalue_output("attention", attention)
        host_x = np.zeros((b, t, self.feature_dim), np.float32)
        host_lengths = np.ones(b, np.int64)
        return _Shape(sess, binding, x, lengths, probs, attention, host_x, host_lengths, graph=graph)

    def _check(self, entry: _Shape, b: int, t: int, reference: tuple) -> dict:
        """The shape's outputs for the reference sequences (cut to ``t`` steps), batched and alone, against the
        checked session's outputs for each alone in its exact shape. Also warms the shape."""
        seqs, probs, attention = reference
        fit = [s[:t] for s in seqs][:b]
        diff_batched = diff_alone = 0.0
        p, a = self._call(entry, fit)
        for k, s in enumerate(fit):
            want_p, want_a = probs[k][len(s)], attention[k][len(s)]
            diff_batched = max(diff_batched, float(np.abs(p[k] - want_p).max()), _att_diff(a[k], want_a))
        p, a = self._call(entry, fit[:1])
        diff_alone = max(float(np.abs(p[0] - probs[0][len(fit[0])]).max()), _att_diff(a[0], attention[0][len(fit[0])]))
        if max(diff_batched, diff_alone) > CHECK_TOLERANCE:
            raise ReferenceMismatch(
                f"shape [{b}, {t}] differs from the checked session by {max(diff_batched, diff_alone):.3g} "
                f"(batched {diff_batched:.3g}, alone {diff_alone:.3g}) > {CHECK_TOLERANCE}"
            )
        return {"max_abs_diff_batched": diff_batched, "max_abs_diff_alone": diff_alone}

    def _call(self, entry: _Shape, seqs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        with entry.lock:
            x, lens = entry.host_x, entry.host_lengths
            x.fill(0.0)
            lens.fill(1)
            for k, s in enumerate(seqs):
                x[k, : len(s)] = s
                lens[k] = len(s)
            entry.x.update_inplace(x)
            entry.lengths.update_inplace(lens)
            entry.session.run_with_iobinding(entry.binding)
            n = len(seqs)  # copied under the lock: the next call reuses the output buffers
            return entry.probs.numpy()[:n].copy(), entry.attention.numpy()[:n].copy()

    def run(self, seqs: list[np.ndarray], b: int, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities [n, C] and attention [n, t] of ``seqs`` (n <= b, each <= t steps) in shape ``(b, t)``."""
        return self._call(self._shapes[(b, t)], seqs)


def _att_diff(got: np.ndarray, want: np.ndarray) -> float:
    n = len(want)
    return max(float(np.abs(got[:n] - want).max()), float(np.abs(got[n:]).max()) if len(got) > n else 0.0)


def _reference_inputs(artifact: Artifact, session: ort.InferenceSession, steps: tuple[int, ...]) -> tuple:
    """Up to 16 sequences (the artifact's reference set, else zeros) and, per sequence and per length it is cut
    to by a rung of ``steps``, the checked session's outputs for that cut alone: ``(seqs, probs[k][n],
    attention[k][n])``."""
    path = artifact.reference_path
    if path.exists():
        ref = np.load(path)
        seqs = [ref["x"][i, :n] for i, n in enumerate(ref["lengths"].tolist())][:16]
    else:
        seqs = [np.zeros((4, int(artifact.meta.feature_dim)), np.float32)]
    probs: list[dict] = []
    attention: list[dict] = []
    for s in seqs:
        p_k, a_k = {}, {}
        for n in sorted({min(len(s), t) for t in steps}):
            p, a = session.run(None, {"x": s[None, :n], "lengths": np.array([n], np.int64)})
            p_k[n], a_k[n] = p[0], a[0]
        probs.append(p_k)
        attention.append(a_k)
    return seqs, probs, attention
