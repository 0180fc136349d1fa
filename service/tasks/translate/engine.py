"""The translator's engine: its two graphs on ONNX Runtime (``Translator``: encoder + decoder step, checked at
load), the tokenizer, and the scheduler that batches every decoding step of every sentence
(``service.core.decoding.encoder_decoder``; or, for the benchmark's comparisons, a per-request loop or
request-level batching)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.core.artifact import Artifact, Translation
from service.core.decoding.encoder_decoder import EncoderDecoderScheduler
from service.core.decoding.per_request import PerRequestLoops
from service.core.runtime import SessionInfo, available_cpus, open_checked_session, session_options
from service.core.settings import Settings
from service.core.tokens import BOS, EOS, PAD, UNK, Tokenizer
from service.core.vocab import Vocabulary
from service.tasks.translate.metrics import TranslateMetrics
from service.tasks.translate.settings import TranslateSettings
from service.tasks.translate.spec import check_files, check_reference


def tokenizer(artifact: Artifact) -> Tokenizer:
    """The artifact's tokenizer (``tokenizer.model`` beside the graphs, or the characters in the metadata)."""
    tr = artifact.meta.translation
    assert tr is not None
    if tr.tokenizer == "sentencepiece":
        return Tokenizer("sentencepiece", artifact.path / "tokenizer.model")
    return Tokenizer("chars", chars=tr.vocab[4:])


@dataclass(frozen=True)
class TranslatorShape:
    """What the scheduler needs of the translator's contract (a ``StepShape``)."""

    vocab: list[str]
    special_ids: dict[str, int]
    layers: int
    hidden: int
    chunk: int
    state_names: list[str]

    @classmethod
    def of(cls, tr: Translation) -> TranslatorShape:
        specials = {"pad": PAD, "unk": UNK, "bos": BOS, "eos": EOS}
        return cls(tr.vocab, specials, tr.dec_layers, tr.hidden, tr.max_source_tokens, tr.state_names)


class Translator:
    """The encoder and decoder step sessions behind ``Seq2SeqRunner``: numpy in, numpy out."""

    def __init__(self, encoder: ort.InferenceSession, step: ort.InferenceSession, tr: Translation) -> None:
        self.encoder, self.session, self.gen = encoder, step, TranslatorShape.of(tr)

    def encode(self, src: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
        return self.encoder.run(None, {"src": src, "lengths": lengths})

    def step(
        self, token: np.ndarray, feed: np.ndarray, memory: np.ndarray, keys: np.ndarray, mask: np.ndarray, states: list
    ) -> list[np.ndarray]:
        feeds = {"token": token, "feed": feed, "memory": memory, "keys": keys, "mask": mask}
        return self.session.run(None, {**feeds, **dict(zip(self.gen.state_names, states))})


def open_translator(artifact: Artifact, device: str, threads: int) -> tuple[Translator, SessionInfo]:
    """Both graphs on the provider the step graph got (CUDA if it initialises and passes the check, else CPU),
    checked together against the artifact's reference sentences."""
    tr = artifact.meta.translation
    assert tr is not None
    check_files(artifact.path, artifact.meta)
    encoders: dict[str, ort.InferenceSession] = {}

    def open_encoder(step: ort.InferenceSession) -> ort.InferenceSession:
        path, opts = str(artifact.path / "encoder.onnx"), session_options(threads, quiet=True, spin=False)
        encoders["encoder"] = ort.InferenceSession(path, opts, providers=step.get_providers())
        return encoders["encoder"]

    def check(step: ort.InferenceSession, reference: Path) -> dict:
        return check_reference(open_encoder(step), step, reference)

    info = open_checked_session(artifact, device, threads, False, check=check)
    if "encoder" not in encoders:  # no reference.npz: nothing was checked (logged), the encoder opens here
        open_encoder(info.session)
    return Translator(encoders["encoder"], info.session, tr), info


class TranslateEngine:
    """One translator: its checked sessions, its tokenizer and its scheduler."""

    def __init__(
        self,
        artifact: Artifact,
        settings: Settings,
        knobs: TranslateSettings | None = None,
        metrics: TranslateMetrics | None = None,
    ) -> None:
        knobs = knobs or TranslateSettings()
        self.artifact = artifact
        self.model_version: str = artifact.meta.model_version
        tr = artifact.meta.translation
        assert tr is not None
        self.ort_threads = settings.ort_threads or max(1, available_cpus() // settings.model_workers)
        self.model, self.info = open_translator(artifact, settings.device, self.ort_threads)
        self.tokenizer = tokenizer(artifact)
        self.metrics = metrics or TranslateMetrics(
            self.model_version, tr.rnn, self.info.provider, settings.device, knobs.streams, artifact.meta.model_name
        )
        model, version, metrics_, detok = self.model, self.model_version, self.metrics, self.tokenizer.decode
        if knobs.mode == "per-request":
            vocab = Vocabulary(model.gen)
            self.scheduler: EncoderDecoderScheduler | PerRequestLoops = PerRequestLoops(
                lambda slots: EncoderDecoderScheduler(model, version, slots, 1, detok, metrics_, vocab=vocab)
            )
        else:
            self.scheduler = EncoderDecoderScheduler(
                model,
                version,
                knobs.streams,
                knobs.encode_streams,
                detok,
                metrics_,
                request_batching=knobs.mode == "request-batching",
                interval=knobs.stream_interval_ms / 1000,
            ).start()
