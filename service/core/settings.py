"""The shared ``SEQSERVE_*`` settings, read once from the environment into one object; a bad value names its
variable. A task's own knobs live in its room (the language model's: ``service.tasks.generate.settings``).

=====================================  =======  ==================================================================
``SEQSERVE_MODEL``                     -        model store tag or artifact directory; unset: the champion
``SEQSERVE_MODELS``                    -        the classifier's model repository: ``NAME``, ``NAME=REF``,
                                                ``NAME=@champion``, comma-separated (service/core/repository.py)
``SEQSERVE_DEVICE``                    auto     auto | cpu | cuda
``SEQSERVE_WORKERS``                   2        API service workers (HTTP, validation, JSON; no model)
``SEQSERVE_MODEL_WORKERS``             1        model service workers, each with its own ORT session and batcher
``SEQSERVE_API_IN_FLIGHT``             2        model calls in flight per API worker; more requests join the next
                                                call (service/core/batching/coalesce.py); 0: one call per request
``SEQSERVE_ORT_THREADS``               0        ORT intra-op threads per model worker (0: usable CPUs / model workers)
``SEQSERVE_ORT_SPIN``                  1        0: idle ORT threads sleep, not spin (leaves CPU to the API workers)
``SEQSERVE_MAX_BATCH_SIZE``            256      sequences per model call of an API worker; calls per adaptive batch
``SEQSERVE_MAX_LATENCY_MS``            2000     adaptive batching deadline (requests beyond it get a 503)
``SEQSERVE_BATCH_WAIT_MS``             2        cap on the batcher's learned idle wait (service/core/bentoml_patches.py)
``SEQSERVE_STEP_BUDGET``               auto     max ``B x T_max`` of one model call (CPU 8192, CUDA 65536)
``SEQSERVE_MAX_SUB_BATCH``             auto     max sequences in one model call (CPU 128, CUDA 512)
``SEQSERVE_MIN_PADDING_EFFICIENCY``    auto     split a sub-batch before its real/padded steps drop below (CPU 0.85,
                                                CUDA 0: one call per batch)
``SEQSERVE_SHAPE_BUCKETS``             auto     on | off | auto (on with CUDA): round call shapes (batching/padding.py)
``SEQSERVE_FIXED_SHAPES``              auto     on | off | auto (on with CUDA): a session per shape (batching/shapes.py)
``SEQSERVE_CUDA_SHAPES``               -        fixed shapes ``B1,B2,..[@T1,T2,..]`` (default 16,64,256,512; T
                                                doubling from 16 to max_length; B x T within the step budget)
``SEQSERVE_CUDA_GRAPH``                0        1: capture each fixed shape's call as a CUDA graph where ORT can
``SEQSERVE_MAX_LENGTH``                0        longest accepted sequence (0: the artifact's max_length)
``SEQSERVE_DRIFT_WINDOW_STEPS``        4096     time steps in the input drift window
``SEQSERVE_DATA_DIR``                  -        feedback store directory (``feedback.db``; default ``.seqserve``)
``SEQSERVE_DATABASE_URL``              -        postgresql://... : the service database in PostgreSQL, not in DATA_DIR
``SEQSERVE_FEEDBACK_HOLDOUT``          0.2      share of feedback items set aside (by id hash) for evaluation only
``SEQSERVE_FEEDBACK_MAX_ITEMS``        1000000  items the feedback store holds at most (then /feedback answers 507)
``SEQSERVE_RELOAD_INTERVAL_S``         5        how often the model service looks for a new champion (0: never)
``SEQSERVE_WORKER_CLAIM_S``            60       a retraining job unclaimed this long: /admin/retrain says no worker runs
``SEQSERVE_ADMIN_TOKEN``               -        bearer token of the /admin routes (unset: the routes are off)
``SEQSERVE_ACCESS_LOG``                0        1: one INFO line per request (costs ~8% of peak throughput)
``SEQSERVE_TRACING``                   0        1: OpenTelemetry spans for the API routes (BentoML's ``tracing``
                                                config picks the exporter); 0: none (they cost ~10% of an API
                                                worker's CPU with no exporter to send them to; issue 26)
``SEQSERVE_CPUS``                      -        the CPUs this service's processes may run on (``1``, ``0-3,6``; Linux
                                                affinity): a throughput service (generation) kept off the cores a
                                                latency-critical one needs (docs/performance.md, make bench-mixed)
``SEQSERVE_CPU_PRIORITY``              normal   normal | low (nice 10) | idle (Linux SCHED_IDLE: CPU only when no other
                                                process wants it); measured: does not protect a neighbour here
``SEQSERVE_MAX_BODY_BYTES``            8388608  largest request body; beyond it a 413 before parsing (core/guard.py)
``SEQSERVE_BODY_TIMEOUT_S``            10       a body not complete this long after the request began: 408
``SEQSERVE_DEADLINE_MS``               30000    a request's deadline (a client's X-Request-Deadline-Ms can only lower
                                                it); work still queued when it passes is dropped, not computed (504)
``SEQSERVE_MAX_REQUEST_STEPS``         65536    time steps per request, all sequences together (400 beyond)
=====================================  =======  ==================================================================

"auto" batching values depend on the provider in use (``Settings.batching``): on the CPU, length-sorted
sub-batches with little padding win; on CUDA a call costs ~1-2 ms whatever its size and each change of input
shape ~6 ms more (H100, ORT 1.31.1; docs/benchmarks.md), so one call per batch, shapes rounded to buckets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from service.core.repository import ModelSpec, parse_models


def _env_number(name: str, default: float, kind: type, minimum: float | None) -> float:
    raw = os.environ.get(name)
    try:
        value = default if raw is None or raw.strip() == "" else kind(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected {'an integer' if kind is int else 'a number'}") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}={value}: must be >= {minimum}")
    return value


def env_int(name: str, default: int, minimum: int | None = None) -> int:
    """An integer setting; a bad value is an error that names the variable."""
    return int(_env_number(name, default, int, minimum))


def env_float(name: str, default: float, minimum: float | None = None) -> float:
    """A number setting; a bad value is an error that names the variable."""
    return float(_env_number(name, default, float, minimum))


def env_optional_float(name: str, minimum: float | None = None) -> float | None:
    """A number setting whose absence means "choose for me" (None)."""
    raw = os.environ.get(name, "").strip()
    return None if raw in ("", "auto") else env_float(name, 0.0, minimum)


def env_cpus(name: str) -> frozenset[int]:
    """A CPU list (``1``, ``0-3,6``) as a set; empty when unset (every CPU). A bad value names the variable."""
    raw = os.environ.get(name, "").strip()
    cpus: set[int] = set()
    try:
        for part in filter(None, (p.strip() for p in raw.split(","))):
            low, _, high = part.partition("-")
            cpus.update(range(int(low), int(high or low) + 1))
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected CPU numbers and ranges such as 1 or 0-3,6") from None
    if raw and (not cpus or min(cpus) < 0):
        raise ValueError(f"{name}={raw!r}: expected CPU numbers and ranges such as 1 or 0-3,6")
    return frozenset(cpus)


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    """A setting with a fixed set of values; a bad value is an error that names the variable."""
    value = os.environ.get(name, default).strip().lower() or default
    if value not in choices:
        raise ValueError(f"{name}={value!r}: must be {', '.join(choices[:-1])} or {choices[-1]}")
    return value


def env_device() -> str:
    return env_choice("SEQSERVE_DEVICE", "auto", ("auto", "cpu", "cuda"))


@dataclass(frozen=True)
class Batching:
    """Sub-batch limits and padding for one provider (service/core/batching/padding.py)."""

    step_budget: int
    max_sub_batch: int
    min_efficiency: float
    shape_buckets: bool


BATCHING_DEFAULTS = {False: Batching(8192, 128, 0.85, False), True: Batching(65536, 512, 0.0, True)}  # key: CUDA?


@dataclass(frozen=True)
class Settings:
    model: str = field(default_factory=lambda: os.environ.get("SEQSERVE_MODEL", ""))
    models: tuple[ModelSpec, ...] = field(default_factory=lambda: parse_models(os.environ.get("SEQSERVE_MODELS", "")))
    device: str = field(default_factory=env_device)
    workers: int = field(default_factory=lambda: env_int("SEQSERVE_WORKERS", 2, minimum=1))
    model_workers: int = field(default_factory=lambda: env_int("SEQSERVE_MODEL_WORKERS", 1, minimum=1))
    api_in_flight: int = field(default_factory=lambda: env_int("SEQSERVE_API_IN_FLIGHT", 2, minimum=0))
    ort_threads: int = field(default_factory=lambda: env_int("SEQSERVE_ORT_THREADS", 0, minimum=0))
    ort_spin: bool = field(default_factory=lambda: env_int("SEQSERVE_ORT_SPIN", 1, minimum=0) == 1)
    max_batch_size: int = field(default_factory=lambda: env_int("SEQSERVE_MAX_BATCH_SIZE", 256, minimum=1))
    max_latency_ms: int = field(default_factory=lambda: env_int("SEQSERVE_MAX_LATENCY_MS", 2000, minimum=1))
    batch_wait_ms: float = field(default_factory=lambda: env_float("SEQSERVE_BATCH_WAIT_MS", 2.0, minimum=0))
    step_budget: int = field(default_factory=lambda: env_int("SEQSERVE_STEP_BUDGET", 0, minimum=0))  # 0: auto
    max_sub_batch: int = field(default_factory=lambda: env_int("SEQSERVE_MAX_SUB_BATCH", 0, minimum=0))  # 0: auto
    min_efficiency: float | None = field(
        default_factory=lambda: env_optional_float("SEQSERVE_MIN_PADDING_EFFICIENCY", minimum=0)
    )
    shape_buckets: str = field(
        default_factory=lambda: env_choice("SEQSERVE_SHAPE_BUCKETS", "auto", ("auto", "on", "off"))
    )
    fixed_shapes: str = field(
        default_factory=lambda: env_choice("SEQSERVE_FIXED_SHAPES", "auto", ("auto", "on", "off"))
    )
    cuda_shapes: str = field(default_factory=lambda: os.environ.get("SEQSERVE_CUDA_SHAPES", "").strip())
    cuda_graph: bool = field(default_factory=lambda: env_int("SEQSERVE_CUDA_GRAPH", 0, minimum=0) == 1)
    max_length: int = field(default_factory=lambda: env_int("SEQSERVE_MAX_LENGTH", 0, minimum=0))
    drift_window_steps: int = field(default_factory=lambda: env_int("SEQSERVE_DRIFT_WINDOW_STEPS", 4096, minimum=1))
    data_dir: str = field(default_factory=lambda: os.environ.get("SEQSERVE_DATA_DIR", "").strip() or ".seqserve")
    database_url: str = field(default_factory=lambda: os.environ.get("SEQSERVE_DATABASE_URL", "").strip(), repr=False)
    feedback_holdout: float = field(default_factory=lambda: env_float("SEQSERVE_FEEDBACK_HOLDOUT", 0.2, minimum=0))
    feedback_max_items: int = field(
        default_factory=lambda: env_int("SEQSERVE_FEEDBACK_MAX_ITEMS", 1_000_000, minimum=1)
    )
    reload_interval_s: float = field(default_factory=lambda: env_float("SEQSERVE_RELOAD_INTERVAL_S", 5.0, minimum=0))
    worker_claim_s: float = field(default_factory=lambda: env_float("SEQSERVE_WORKER_CLAIM_S", 60.0, minimum=1))
    admin_token: str = field(default_factory=lambda: os.environ.get("SEQSERVE_ADMIN_TOKEN", ""), repr=False)
    access_log: bool = field(default_factory=lambda: env_int("SEQSERVE_ACCESS_LOG", 0, minimum=0) == 1)
    tracing: bool = field(default_factory=lambda: env_int("SEQSERVE_TRACING", 0, minimum=0) == 1)
    cpus: frozenset[int] = field(default_factory=lambda: env_cpus("SEQSERVE_CPUS"))
    cpu_priority: str = field(
        default_factory=lambda: env_choice("SEQSERVE_CPU_PRIORITY", "normal", ("normal", "low", "idle"))
    )
    max_body_bytes: int = field(default_factory=lambda: env_int("SEQSERVE_MAX_BODY_BYTES", 8 << 20, minimum=1024))
    body_timeout_s: float = field(default_factory=lambda: env_float("SEQSERVE_BODY_TIMEOUT_S", 10.0, minimum=0.1))
    deadline_ms: float = field(default_factory=lambda: env_float("SEQSERVE_DEADLINE_MS", 30000.0, minimum=1))
    max_request_steps: int = field(default_factory=lambda: env_int("SEQSERVE_MAX_REQUEST_STEPS", 65536, minimum=1))

    def __post_init__(self) -> None:
        if self.model and self.models:
            raise ValueError(
                "SEQSERVE_MODEL and SEQSERVE_MODELS are both set: name the model in SEQSERVE_MODELS (NAME=REF)"
            )
        if self.database_url and not self.database_url.startswith(("postgresql://", "postgres://")):
            raise ValueError("SEQSERVE_DATABASE_URL: must be a postgresql:// URL")
        if self.feedback_holdout > 1:
            raise ValueError(f"SEQSERVE_FEEDBACK_HOLDOUT={self.feedback_holdout}: must be <= 1")

    @property
    def database(self) -> str:
        """Where the service database lives: the PostgreSQL URL if set, else the data directory."""
        return self.database_url or self.data_dir

    def batching(self, cuda: bool) -> Batching:
        """How the engine cuts and pads merged batches on the provider in use: the settings, "auto" resolved."""
        d = BATCHING_DEFAULTS[cuda]
        return Batching(
            self.step_budget or d.step_budget,
            self.max_sub_batch or d.max_sub_batch,
            d.min_efficiency if self.min_efficiency is None else self.min_efficiency,
            d.shape_buckets if self.shape_buckets == "auto" else self.shape_buckets == "on",
        )

    def accepted_max_length(self, artifact_max_length: int) -> int:
        """The longest sequence served: SEQSERVE_MAX_LENGTH when set (> 0), else the artifact's max_length."""
        return self.max_length or artifact_max_length
