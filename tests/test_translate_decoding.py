"""The translator's serving side in process (issue 25): the encoder-decoder scheduler against the training's own
decoders on the exported graphs, beam determinism alone and among 32 concurrent requests, n-best order, the length
and coverage penalties, target prefixes, sampling seeds, and the request validation of ``POST /translate``."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from service.core.artifact import find_artifact
from service.core.decoding.beam import STOPPING, Beams
from service.core.settings import Settings
from service.core.tokens import BOS, EOS
from service.tasks.translate.engine import TranslateEngine
from service.tasks.translate.params import DEFAULT_STOPPING, Limits, TranslateError, parse


@pytest.fixture(scope="module")
def engine(translate_artifact: Path) -> TranslateEngine:
    e = TranslateEngine(find_artifact(str(translate_artifact)), Settings())
    yield e
    e.scheduler.drain()


@pytest.fixture(scope="module")
def limits(engine: TranslateEngine) -> Limits:
    tr = engine.artifact.meta.translation
    return Limits(64, tr.max_source_tokens, tr.max_target_tokens, 16, 256)


@pytest.fixture(scope="module")
def texts(engine: TranslateEngine, translate_run: Path) -> list[str]:
    lines = (translate_run.parent / "pairs.tsv").read_text("utf-8").splitlines()
    fits = [t for t in (line.split("\t")[0] for line in lines) if len(engine.tokenizer.encode(t)) < 23]
    assert len(fits) >= 20
    return fits[:20]


def run(engine: TranslateEngine, body: dict, limits: Limits, extra: list[dict] | None = None) -> list[dict]:
    """``body``'s texts through the scheduler (with ``extra`` bodies submitted at the same time); their summaries."""
    reqs, _ = parse(body, engine.tokenizer, limits)
    others = [r for b in extra or [] for r in parse(b, engine.tokenizer, limits)[0]]
    done: dict[int, dict] = {}
    left = [len(reqs) + len(others)]
    finished = threading.Event()

    def emitter(i: int):  # noqa: ANN202
        def emit(event: dict) -> None:
            if "event" in event:
                done[i] = event
                left[0] -= 1
                if not left[0]:
                    finished.set()

        return emit

    for i, r in enumerate(others):
        engine.scheduler.submit(r, emitter(-1 - i))
    for i, r in enumerate(reqs):
        engine.scheduler.submit(r, emitter(i))
    assert finished.wait(120)
    return [done[i] for i in range(len(reqs))]


def test_the_scheduler_decodes_what_the_training_decoders_decode(
    engine: TranslateEngine, limits: Limits, texts: list[str], translate_artifact: Path
) -> None:
    """Token for token, beam 5 (all five hypotheses, in order) and greedy: the service's scheduler and the driver
    that measured the run and gated the export, on the same ONNX graphs."""
    from training.onnx import cpu_session
    from training.tasks.translate import decode
    from training.tasks.translate.export import OrtStep

    ort = OrtStep(cpu_session(translate_artifact / "encoder.onnx"), cpu_session(translate_artifact / "model.onnx"))
    src = [engine.tokenizer.encode(t) + [EOS] for t in texts]
    ml = decode.max_lengths(np.array([len(s) for s in src]), engine.artifact.meta.translation.max_target_tokens)
    for mode in STOPPING:
        want = decode.beam(ort, ort.encode(src), ml, BOS, EOS, 5, early_stopping=mode)
        got = run(engine, {"texts": texts, "beam_size": 5, "n_best": 5, "early_stopping": mode}, limits)
        for g, w in zip(got, want):
            assert [h["text"] for h in g["hypotheses"]] == [engine.tokenizer.decode(h.tokens) for h in w], mode
            assert [h["tokens"] for h in g["hypotheses"]] == [len(h.tokens) for h in w]
            assert np.allclose([h["score"] for h in g["hypotheses"]], [h.normalised(1.0) for h in w], atol=1e-5)
    assert decode.STOPPING == DEFAULT_STOPPING  # the run measures what the server does by default
    greedy = run(engine, {"texts": texts, "beam_size": 1}, limits)
    assert [g["text"] for g in greedy] == [
        engine.tokenizer.decode(t) for t in decode.greedy(ort, ort.encode(src), ml, BOS, EOS)
    ]


def test_beams_are_the_same_alone_and_among_32_concurrent_requests(
    engine: TranslateEngine, limits: Limits, texts: list[str]
) -> None:
    body = {"texts": texts[:3], "beam_size": 4, "n_best": 4}
    alone = run(engine, body, limits)
    crowd = [{"texts": [texts[(i + 5) % len(texts)]], "beam_size": 1 + i % 6} for i in range(32)]
    loaded = run(engine, body, limits, extra=crowd)
    strip = lambda out: [[(h["text"], h["tokens"], round(h["score"], 4)) for h in o["hypotheses"]] for o in out]  # noqa: E731
    assert strip(alone) == strip(loaded)
    for o in alone:  # n-best: best first, each score its own length-normalised sum
        scores = [h["score"] for h in o["hypotheses"]]
        assert scores == sorted(scores, reverse=True) and len(scores) == 4


def test_length_penalty_ranks_by_score_over_length_to_the_power() -> None:
    """Two endings: [1, </s>] with the higher sum (-1.1), [2, 2, 2, 2, </s>] with the higher score per token
    (-2.4 / 5). Without a length penalty the short one wins; with length_penalty 1 the long one."""
    rows = {
        (): [-9, -0.1, -2.0, -9],
        (1,): [-9, -9, -9, -1.0],
        (2,): [-9, -9, -0.1, -5],
        (2, 2): [-9, -9, -0.1, -5],
        (2, 2, 2): [-9, -9, -0.1, -5],
        (2, 2, 2, 2): [-9, -9, -9, -0.1],
    }

    def search(alpha: float) -> list[int]:
        b = Beams(2, 5, 3, alpha)
        while not b.done:
            b.step(np.array([rows.get(tuple(h.tokens), [-9] * 4) for h in b.live], np.float32))
        return b.best()[0].tokens

    assert search(0.0) == [1, 3]
    assert search(1.0) == [2, 2, 2, 2, 3]


def exhaustive_step(live: list, log_probs: np.ndarray, width: int, eos: int) -> tuple[list, list]:
    """Every extension of every live beam sorted by (-score, flat index): the search Beams.step shortcuts."""
    ext, ends = [], []
    v = log_probs.shape[1]
    for i, (tokens, score) in enumerate(live):
        for t in range(v):
            s = score + float(np.float64(log_probs[i, t]))
            if np.isfinite(s):
                (ends if t == eos else ext).append((-s, i * v + t, [*tokens, t], s))
    ext.sort(key=lambda e: (e[0], e[1]))
    return [(e[2], e[3]) for e in ext[:width]], [(e[2], e[3]) for e in ends]


def test_beam_steps_choose_what_an_exhaustive_sort_of_every_extension_chooses() -> None:
    """Beams.step looks only at each row's most likely tokens (one partition per row); on log-probabilities
    full of ties, -inf and rows with a single finite token it keeps exactly the beams and finished hypotheses
    that sorting every extension keeps."""
    rng = np.random.default_rng(7)
    for case in range(60):
        width, v, eos = int(rng.integers(1, 6)), int(rng.integers(3, 40)), 1
        b, live, finished = Beams(width, 6, eos, float(rng.choice([0.0, 0.6, 1.0]))), [([], 0.0)], []
        while not b.done:
            lp = np.round(rng.normal(-3, 2, (len(b.live), v)), int(rng.integers(0, 2))).astype(np.float32)
            lp[rng.random(lp.shape) < 0.3] = -np.inf
            if case % 5 == 0:
                lp[0, :] = -np.inf
                lp[0, int(rng.integers(v))] = -0.5
            step = len(b.live[0].tokens)
            b.step(lp)
            live, ends = exhaustive_step(live, lp, width, eos)
            finished += [(t, s, n) for n, (t, s) in enumerate(ends, len(finished))]
            if step + 1 >= 6:
                finished += [(t, s, n) for n, (t, s) in enumerate(live, len(finished))]
                live = []
            assert [h.tokens for h in b.live] == [t for t, _ in live]
            assert [h.score for h in b.live] == [s for _, s in live]
        finished.sort(key=lambda f: (-f[1] / max(1, len(f[0])) ** b.alpha, f[2]))
        assert [h.tokens for h in b.best()] == [t for t, _, _ in finished[:width]]


def test_coverage_penalty_prefers_the_hypothesis_that_attends_every_source_token() -> None:
    """Two hypotheses with equal log-probabilities: one looked at source token 0 twice, the other at both tokens.
    With coverage_penalty 0 the first (lower index) wins the tie; with 1 the one that covered the source."""

    def search(beta: float) -> list[int]:
        b = Beams(2, 3, 3, 1.0, beta)
        b.step(np.log(np.array([[1e-9, 0.5, 0.5, 1e-9]], np.float32)), np.array([[1.0, 0.0]], np.float32))
        b.step(np.log(np.array([[1e-9, 1e-9, 1e-9, 1.0]] * 2, np.float32)), np.array([[1.0, 0.0], [0.0, 1.0]]))
        return b.best()[0].tokens

    assert search(0.0) == [1, 3]
    assert search(1.0) == [2, 3]


def test_a_target_prefix_starts_every_hypothesis(engine: TranslateEngine, limits: Limits, texts: list[str]) -> None:
    prefix = "They"
    ids = engine.tokenizer.encode(prefix)
    for beam in (1, 4):
        out = run(
            engine,
            {"texts": texts[:3], "beam_size": beam, "n_best": beam, "target_prefix": [prefix, None, prefix]},
            limits,
        )
        for o in (out[0], out[2]):
            assert all(h["text"].startswith(prefix) for h in o["hypotheses"]), o
    reqs, _ = parse({"texts": texts[:1], "target_prefix": [prefix]}, engine.tokenizer, limits)
    assert reqs[0].constraint is not None and reqs[0].constraint.tokens == ids


def test_sampling_is_reproducible_by_seed(engine: TranslateEngine, limits: Limits, texts: list[str]) -> None:
    body = {"texts": texts[:4], "beam_size": 1, "sampling": {"temperature": 1.0, "top_p": 0.95, "seed": 7}}
    a, b = run(engine, body, limits), run(engine, body, limits)
    assert [x["text"] for x in a] == [x["text"] for x in b]
    c = run(engine, {**body, "sampling": {"temperature": 1.0, "top_p": 0.95, "seed": 8}}, limits)
    assert [x["text"] for x in a] != [x["text"] for x in c]


def test_attention_is_an_alignment_over_the_source(engine: TranslateEngine, limits: Limits, texts: list[str]) -> None:
    for beam in (1, 3):
        out = run(engine, {"texts": texts[:2], "beam_size": beam, "return_attention": True}, limits)
        for o, t in zip(out, texts[:2]):
            h = o["hypotheses"][0]
            a = np.array(h["attention"])
            assert a.shape == (len(engine.tokenizer.encode(t)) + 1, h["tokens"])  # [source + </s>][target]
            assert np.allclose(a.sum(0), 1.0, atol=1e-3)  # each target token's weights sum to 1


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ([], "body: expected a JSON object"),
        ({"texts": "Hallo."}, "texts: required"),
        ({"texts": []}, "texts: required"),
        ({"texts": ["Hallo."] * 65}, "texts: 65 texts, the limit is 64"),
        ({"texts": ["Hallo.", 3]}, "texts[1]: expected a non-empty string"),
        ({"texts": ["  "]}, "texts[0]: expected a non-empty string"),
        ({"texts": ["x" * 10_001]}, "texts[0]: 10001 characters, the limit is 10000"),
        ({"texts": ["Das ist ein sehr langer Satz, viel zu lang für dieses Modell, wirklich."]}, "the limit is 24"),
        ({"texts": ["Hallo."], "beam_size": 0}, "beam_size: 0 is outside [1, 16]"),
        ({"texts": ["Hallo."], "beam_size": 2.5}, "beam_size: expected an integer"),
        ({"texts": ["Hallo."], "beam_size": True}, "beam_size: expected an integer"),
        ({"texts": ["Hallo."] * 20, "beam_size": 16}, "texts x beam_size: 20 x 16 = 320, the limit is 256"),
        ({"texts": ["Hallo."], "beam_size": 2, "n_best": 3}, "n_best: 3 is outside [1, 2]"),
        ({"texts": ["Hallo."], "length_penalty": -1}, "length_penalty"),
        ({"texts": ["Hallo."], "length_penalty": float("nan")}, "length_penalty: expected a number"),
        ({"texts": ["Hallo."], "beam_size": 1, "coverage_penalty": 0.2}, "coverage_penalty: only with beam_size > 1"),
        ({"texts": ["Hallo."], "max_decoding_length": 257}, "max_decoding_length: 257 is outside [1, 256]"),
        ({"texts": ["Hallo."], "sampling": {"temperature": 1}, "beam_size": 3}, "beam_size: must be 1 with sampling"),
        ({"texts": ["Hallo."], "sampling": {"temp": 1}}, "sampling.temp: unknown field"),
        ({"texts": ["Hallo."], "sampling": {"top_p": 0}}, "sampling.top_p: 0 is outside (0.0, 1.0]"),
        ({"texts": ["Hallo."], "sampling": "greedy"}, "sampling: expected an object"),
        ({"texts": ["Hallo."], "stream": True}, "stream: only with beam_size 1"),
        ({"texts": ["Hallo."], "stream": "yes", "beam_size": 1}, "stream: expected true or false"),
        ({"texts": ["Hallo."], "target_prefix": ["a", "b"]}, "target_prefix: expected null or a list of 1"),
        ({"texts": ["Hallo."], "target_prefix": [5]}, "target_prefix[0]: expected a string"),
        ({"texts": ["Hallo."], "max_decoding_length": 2, "target_prefix": ["They are here"]}, "target_prefix[0]"),
        ({"texts": ["Hallo."], "num_beams": 2}, "num_beams: unknown field"),
    ],
)
def test_bad_requests_name_the_field_and_the_limit(
    engine: TranslateEngine, limits: Limits, body: object, needle: str
) -> None:
    with pytest.raises(TranslateError) as e:
        parse(body, engine.tokenizer, limits)
    assert needle in str(e.value) and e.value.status == 400


def test_every_translate_metric_family_has_a_dashboard_panel() -> None:
    import json

    from prometheus_client.metrics import MetricWrapperBase

    from service.tasks.translate import metrics

    dashboard = (Path(__file__).resolve().parents[1] / "deploy/grafana/seqserve.json").read_text()
    exprs = " ".join(t["expr"] for p in json.loads(dashboard)["panels"] for t in p["targets"])
    families = {m.name for v in vars(metrics).values() if isinstance(v, MetricWrapperBase) for m in v.describe()}
    assert families and not {f for f in families if f not in exprs}


def stop_search(mode: str, width: int, alpha: float, tables: dict, rng: np.random.Generator) -> tuple[Beams, int]:
    """A beam search (12 tokens, ``</s>`` = 1) over random log-probabilities, one table per prefix (``tables``,
    shared between modes); the search and the steps it ran."""
    b, steps = Beams(width, 12, 1, alpha, early_stopping=mode), 0
    while not b.done:
        rows = []
        for h in b.live:
            key = tuple(h.tokens)
            if key not in tables:
                tables[key] = np.log(rng.dirichlet(np.full(12, 0.3))).astype(np.float32)
            rows.append(tables[key])
        b.step(np.array(rows))
        steps += 1
        if mode == "first" and len(b.finished) >= width:
            assert b.done
    return b, steps


def test_early_stopping_first_and_heuristic_stop_sooner_than_the_exact_search() -> None:
    """On random log-probabilities: "first" stops as soon as width hypotheses finished (each ending among its
    step's width best extensions), "heuristic" no later than the exact "never", which (the live beams being the
    same in every mode) finds hypotheses at least as good as either."""
    rng = np.random.default_rng(3)
    for _ in range(40):
        width, alpha, tables = int(rng.integers(2, 5)), float(rng.choice([0.6, 1.0])), {}
        (never, n), (heuristic, h), (first, f) = (stop_search(m, width, alpha, tables, rng) for m in STOPPING)
        assert h <= n and f <= 12 and (len(first.finished) == width or not first.live)
        best = never.best()[0].normalised(alpha)
        assert heuristic.best()[0].normalised(alpha) <= best and first.best()[0].normalised(alpha) <= best


def test_early_stopping_is_a_request_field_named_in_its_errors(engine: TranslateEngine, limits: Limits) -> None:
    reqs, _ = parse({"texts": ["Guten Tag."], "early_stopping": "heuristic"}, engine.tokenizer, limits)
    assert reqs[0].early_stopping == "heuristic"
    assert parse({"texts": ["Guten Tag."]}, engine.tokenizer, limits)[0][0].early_stopping == DEFAULT_STOPPING
    with pytest.raises(TranslateError, match=r"early_stopping: 'sometimes'; one of never, heuristic, first"):
        parse({"texts": ["Guten Tag."], "early_stopping": "sometimes"}, engine.tokenizer, limits)
