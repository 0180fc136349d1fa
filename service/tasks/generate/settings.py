"""The language model's settings (``SEQSERVE_GENERATE_*``), read once from the environment; a bad value names its
variable. The shared ones (workers, device, limits, database): ``service.core.settings``.

=====================================  =======  ==================================================================
``SEQSERVE_GENERATE_STREAMS``          4096     generation state slots (a request takes 1, a beam search num_beams)
``SEQSERVE_GENERATE_MAX_WAITING``      4096     requests waiting for slots; beyond it /generate answers 429
``SEQSERVE_GENERATE_CHUNK``            32       prompt tokens a stream reads per step call (long prompts in chunks)
``SEQSERVE_GENERATE_PREFILL_STREAMS``  32       prompts read side by side in one call
``SEQSERVE_GENERATE_MAX_NEW_TOKENS``   0        most new tokens per request (0: the artifact's max_new_tokens)
``SEQSERVE_GENERATE_MAX_BEAMS``        16       most beams per request
``SEQSERVE_GENERATE_INTERVAL_MS``      20       a stream's text leaves at most this often (the first token at once);
                                                what arrives meanwhile goes out as one event (0: every token)
``SEQSERVE_GENERATE_ORT_SPIN``         0        1: the language model's idle ORT threads spin (0 measured faster: the
                                                step loop alternates Python and ORT on cores shared with HTTP)
``SEQSERVE_GENERATE_MODE``             step     step (the step scheduler); per-request or request-batching: the
                                                benchmark's comparisons (loadtest/bench_generate.py)
=====================================  =======  ==================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field

from service.core.settings import env_choice, env_float, env_int


@dataclass(frozen=True)
class GenerateSettings:
    streams: int = field(default_factory=lambda: env_int("SEQSERVE_GENERATE_STREAMS", 4096, minimum=16))
    max_waiting: int = field(default_factory=lambda: env_int("SEQSERVE_GENERATE_MAX_WAITING", 4096, minimum=0))
    chunk: int = field(default_factory=lambda: env_int("SEQSERVE_GENERATE_CHUNK", 32, minimum=1))
    prefill_streams: int = field(default_factory=lambda: env_int("SEQSERVE_GENERATE_PREFILL_STREAMS", 32, minimum=1))
    max_new_tokens: int = field(default_factory=lambda: env_int("SEQSERVE_GENERATE_MAX_NEW_TOKENS", 0, minimum=0))
    max_beams: int = field(default_factory=lambda: env_int("SEQSERVE_GENERATE_MAX_BEAMS", 16, minimum=1))
    stream_interval_ms: float = field(
        default_factory=lambda: env_float("SEQSERVE_GENERATE_INTERVAL_MS", 20.0, minimum=0)
    )
    ort_spin: bool = field(default_factory=lambda: env_int("SEQSERVE_GENERATE_ORT_SPIN", 0, minimum=0) == 1)
    mode: str = field(
        default_factory=lambda: env_choice(
            "SEQSERVE_GENERATE_MODE", "step", ("step", "per-request", "request-batching")
        )
    )
