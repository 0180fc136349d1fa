"""Fixed call shapes: one ONNX Runtime session per ``[B, T]`` shape, so that no session ever sees a new shape.

On the CUDA provider a call whose input shape differs from the session's previous call costs ~6 ms of set-up,
a repeated shape 1-2 ms, and a session remembers only its last shape (H100, ORT 1.31.1, docs/performance.md).
Rounding shapes to buckets did not help: calls still alternate between buckets on one session. So the CUDA
path gets a fixed ladder of shapes (``SEQSERVE_CUDA_SHAPES``) and one session per shape:

* **B** (rows) from the setting, default ``16,64,256,512``; **T** (steps) a doubling ladder from 16 up to the
  served ``max_length`` (its last rung), or the steps given after ``@`` (``16,64,256,512@32,64,128``).
* ``ShapeLadder.plan`` sorts a merged batch by length and cuts it into calls of at most the largest B; each
  call is padded up to the smallest ``(B, T)`` rung that holds it. Extra rows are one-step zero sequences whose
  outputs are dropped; the ``lengths`` input masks the extra steps, so a sequence's output does not depend on
  its shape (checked at load for every shape, and in tests on CPU through this same code).
* The task opens one session per rung, bound to its own tensors (the classifier:
  ``service.tasks.classify.shapes.ShapedSessions``), checks each against the already checked session and
  refuses a ladder that leaves less than ``GPU_RESERVE`` of the GPU's memory free (``gpu_memory_mib``).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

import numpy as np

VARIABLE = "SEQSERVE_CUDA_SHAPES"
DEFAULT_BATCHES = (16, 64, 256, 512)
FIRST_STEPS = 16
MAX_SHAPES = 64
GPU_RESERVE = 0.10  # share of the GPU's memory a ladder must leave free


@dataclass(frozen=True)
class ShapeLadder:
    batches: tuple[int, ...]  # ascending
    steps: tuple[int, ...]  # ascending; the last is the longest sequence served
    step_budget: int  # max B x T of a rung (the smallest B is kept at every T)

    def rows_at(self, steps: int) -> int:
        """The largest B of the rungs at ``steps``."""
        return max([b for b in self.batches if b * steps <= self.step_budget] or [self.batches[0]])

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [(b, t) for t in self.steps for b in self.batches if b <= self.rows_at(t)]

    def shape_for(self, rows: int, longest: int) -> tuple[int, int]:
        """The smallest rung holding ``rows`` sequences of at most ``longest`` steps."""
        return next(b for b in self.batches if b >= rows), self._steps(longest)

    def plan(self, lengths: np.ndarray) -> list[tuple[np.ndarray, int, int]]:
        """Index arrays (shortest sequences first) with their ``(B, T)`` shape: one model call each. A call
        takes sequences in length order while its rows fit the largest B at its longest sequence's T."""
        order = np.argsort(lengths, kind="stable")
        calls, start = [], 0
        for pos in range(1, len(order) + 1):
            if pos == len(order) or pos - start + 1 > self.rows_at(self._steps(int(lengths[order[pos]]))):
                idx = order[start:pos]
                calls.append((idx, *self.shape_for(len(idx), int(lengths[idx[-1]]))))
                start = pos
        return calls

    def _steps(self, longest: int) -> int:
        return next(t for t in self.steps if t >= longest)


def parse_ladder(raw: str, max_length: int, step_budget: int) -> ShapeLadder:
    """``"B1,B2,...[@T1,T2,...]"`` (empty: the defaults) -> a ladder; a bad value names ``SEQSERVE_CUDA_SHAPES``."""
    rows, _, steps = raw.strip().partition("@")

    def numbers(text: str, what: str) -> tuple[int, ...]:
        try:
            values = sorted({int(v) for v in text.split(",") if v.strip()})
        except ValueError:
            raise ValueError(f"{VARIABLE}={raw!r}: {what} must be comma-separated integers") from None
        if values and values[0] < 1:
            raise ValueError(f"{VARIABLE}={raw!r}: {what} must be >= 1")
        return tuple(values)

    batches = numbers(rows, "batch sizes") or DEFAULT_BATCHES
    given = numbers(steps, "step counts")
    if any(t > max_length for t in given):
        raise ValueError(f"{VARIABLE}={raw!r}: step counts must be <= the served max_length {max_length}")
    ladder = list(given) if given else [t for t in (FIRST_STEPS << k for k in range(32)) if t < max_length]
    if not ladder or ladder[-1] < max_length:
        ladder.append(max_length)  # every accepted sequence fits a rung
    result = ShapeLadder(batches, tuple(ladder), step_budget)
    if len(result.shapes) > MAX_SHAPES:
        raise ValueError(
            f"{VARIABLE}={raw!r}: {len(result.shapes)} shapes (sessions), more than {MAX_SHAPES}; "
            f"give fewer batch sizes or step counts (e.g. 64,512@64,{max_length})"
        )
    return result


def gpu_memory_mib() -> tuple[int, int] | None:
    """(used, total) MiB of GPU 0 from nvidia-smi, or None without one."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        used, total = (int(v) for v in out.split(","))
        return used, total
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def fixed_shapes_wanted(setting: str, cuda: bool) -> bool:
    """``SEQSERVE_FIXED_SHAPES``: on, off, or auto (on with CUDA)."""
    return setting == "on" or (setting == "auto" and cuda)
