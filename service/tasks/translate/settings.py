"""The translator's settings (``SEQSERVE_TRANSLATE_*``), read once from the environment; a bad value names its
variable. The shared ones (workers, device, limits, database): ``service.core.settings``.

======================================  =======  =================================================================
``SEQSERVE_TRANSLATE_STREAMS``          1024     decoder state slots (a sentence takes 1, a beam search beam_size)
``SEQSERVE_TRANSLATE_MAX_WAITING``      1024     sentences waiting for slots; beyond it /translate answers 429
``SEQSERVE_TRANSLATE_ENCODE_STREAMS``   32       source sentences read by one encoder call
``SEQSERVE_TRANSLATE_MAX_TEXTS``        64       texts per request
``SEQSERVE_TRANSLATE_MAX_BEAMS``        16       beam_size limit
``SEQSERVE_TRANSLATE_MAX_ROWS``         256      texts x beam_size of one request (the decoder rows it may hold)
``SEQSERVE_TRANSLATE_INTERVAL_MS``      20       a streamed translation's text leaves at most this often
``SEQSERVE_TRANSLATE_MODE``             step     step (the step scheduler); per-request or request-batching: the
                                                 benchmark's comparisons (loadtest/bench_translate.py)
======================================  =======  =================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field

from service.core.settings import env_choice, env_float, env_int


@dataclass(frozen=True)
class TranslateSettings:
    streams: int = field(default_factory=lambda: env_int("SEQSERVE_TRANSLATE_STREAMS", 1024, minimum=16))
    max_waiting: int = field(default_factory=lambda: env_int("SEQSERVE_TRANSLATE_MAX_WAITING", 1024, minimum=0))
    encode_streams: int = field(default_factory=lambda: env_int("SEQSERVE_TRANSLATE_ENCODE_STREAMS", 32, minimum=1))
    max_texts: int = field(default_factory=lambda: env_int("SEQSERVE_TRANSLATE_MAX_TEXTS", 64, minimum=1))
    max_beams: int = field(default_factory=lambda: env_int("SEQSERVE_TRANSLATE_MAX_BEAMS", 16, minimum=1))
    max_rows: int = field(default_factory=lambda: env_int("SEQSERVE_TRANSLATE_MAX_ROWS", 256, minimum=1))
    stream_interval_ms: float = field(
        default_factory=lambda: env_float("SEQSERVE_TRANSLATE_INTERVAL_MS", 20.0, minimum=0)
    )
    mode: str = field(
        default_factory=lambda: env_choice(
            "SEQSERVE_TRANSLATE_MODE", "step", ("step", "per-request", "request-batching")
        )
    )
