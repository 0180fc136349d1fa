"""The translator's torch room (issue 25): the dictionary's pairs, the split, exactness under padding, the decoders
driven by torch and by ONNX Runtime, and the export's parity gate. Fast: a small model on real pairs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from service.core.artifact import ArtifactMeta
from service.core.tokens import BOS, EOS, PAD, Tokenizer, char_inventory, train_sentencepiece
from training.data import DataError
from training.tasks.translate import decode
from training.tasks.translate.data import DING, Pairs, alternatives, is_sentence, read_ding, read_tsv, split
from training.tasks.translate.model import S2SConfig, Seq2Seq
from training.tasks.translate.train import Candidates, TorchStep, padded

# Real entries of the Ding dictionary (trans-de-en 1.9), as the file has them.
ENTRIES = "\n".join(
    [
        "# Version :: devel 2023-01-30",
        "Abart {f}; Variante {f}; Variation {f} (von etw.) | Abarten {pl}; Varianten {pl}; Variationen {pl} | "
        "Es gibt sie in den unterschiedlichsten Varianten. :: variation; variant (of sth.) | variations; variants | "
        "They come in all shapes and sizes.",
        "Noch ist nicht aller Tage Abend.; Man soll den Tag nicht vor dem Abend loben. :: It’s not over until it’s "
        "over.; It’s not / It isn’t / It ain’t over till the fat lady sings. [Am.]",
        "Aalbestand {m} | Aalbestände {pl} :: eel stock | eel stocks",
        "Wie die Mutter, so die Tochter. :: Like mother, like daughter.",
    ]
)


def test_alternatives_split_outside_parentheses_and_drop_annotations() -> None:
    assert alternatives("Abart {f}; Variante {f}; Variation {f} (von etw.; auch)") == [
        "Abart",
        "Variante",
        "Variation (von etw.; auch)",
    ]
    assert alternatives("to have tea [Sc.]") == ["to have tea"]
    assert is_sentence("Wie die Mutter, so die Tochter.") and not is_sentence("Abarten")
    assert not is_sentence("It’s not / It isn’t over till it is.")


def test_the_dictionary_gives_aligned_sentence_and_phrase_pairs(tmp_path: Path) -> None:
    f = tmp_path / "de-en"
    f.write_text(ENTRIES, encoding="utf-8")
    sentences, phrases = read_ding(f)
    assert list(zip(sentences.source, sentences.target)) == [
        ("Es gibt sie in den unterschiedlichsten Varianten.", "They come in all shapes and sizes."),
        ("Noch ist nicht aller Tage Abend.", "It’s not over until it’s over."),  # the first alternatives
        ("Wie die Mutter, so die Tochter.", "Like mother, like daughter."),
    ]
    assert ("Abart", "variation") in zip(phrases.source, phrases.target)
    assert ("Aalbestände", "eel stocks") in zip(phrases.source, phrases.target)


def test_the_installed_dictionary_has_the_issues_counts() -> None:
    if not DING.exists():
        pytest.skip(f"{DING} missing: the Debian package trans-de-en is not installed (make trans-de-en; CI does)")
    sentences, phrases = read_ding()
    assert 15_000 < len(sentences) < 17_000 and len(phrases) > 300_000
    train, valid, test = split(sentences, 1000, 500, seed=0)
    assert len(test) >= 1000 and len(valid) >= 500 and len(train) + len(valid) + len(test) == len(sentences)
    assert not set(test.source) & set(train.source)


def test_pair_files_fail_with_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "pairs.tsv"
    f.write_text("Guten Morgen.\tGood morning.\n\nnur eine Spalte\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"pairs.tsv:3: expected source<TAB>target"):
        read_tsv(f)
    f.write_text("Hallo.\t\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"pairs.tsv:1: empty target"):
        read_tsv(f)
    with pytest.raises(DataError, match="file not found"):
        read_tsv(tmp_path / "missing.tsv")


def test_the_split_is_seeded_and_keeps_a_source_on_one_side() -> None:
    pairs = Pairs([f"s{i % 50}" for i in range(200)], [f"t{i}" for i in range(200)])
    a, b = split(pairs, 10, 5, seed=3), split(pairs, 10, 5, seed=3)
    assert [p.source for p in a] == [p.source for p in b]
    train, valid, test = a
    assert not (set(train.source) & set(test.source)) and not (set(valid.source) & set(test.source))
    assert len(test) >= 10 and len(valid) >= 5


def small_model(rnn: str, attention: str) -> Seq2Seq:
    torch.manual_seed(0)
    return Seq2Seq(S2SConfig(40, PAD, BOS, EOS, rnn, attention, 16, 24, 2, 1, 0.0)).eval()


@pytest.mark.parametrize("rnn,attention", [("gru", "bahdanau"), ("lstm", "luong")])
def test_a_sentence_is_the_same_alone_and_batched_with_longer_ones(rnn: str, attention: str) -> None:
    model = small_model(rnn, attention)
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(4, 40, (n,), generator=g).tolist() for n in (3, 11, 7)]
    tgt = torch.randint(4, 40, (3, 6), generator=g)
    with torch.no_grad():
        batched = model(padded(seqs), torch.tensor([3, 11, 7]), tgt)
        alone = model(padded(seqs[:1]), torch.tensor([3]), tgt[:1])
    assert torch.allclose(alone[0], batched[0], atol=1e-5)
    step = TorchStep(model, torch.device("cpu"))
    with torch.no_grad():
        enc = step.encode(seqs)
        ml = decode.max_lengths(np.array([3, 11, 7]), 30)
        together = decode.beam(step, enc, ml, BOS, EOS, 4)
        for i, s in enumerate(seqs):
            one = decode.beam(step, step.encode([s]), ml[i : i + 1], BOS, EOS, 4)[0]
            assert [h.tokens for h in one] == [h.tokens for h in together[i]]
        greedy = decode.greedy(step, enc, ml, BOS, EOS)
        assert [decode.greedy(step, step.encode([s]), ml[i : i + 1], BOS, EOS)[0] for i, s in enumerate(seqs)] == greedy
    # the mask: attention on padding is exactly 0
    with torch.no_grad():
        memory, keys, mask, *state = model.encode(padded(seqs), torch.tensor([3, 11, 7]))
        _, _, attn = model.step(torch.full((3,), BOS), tuple(state), torch.zeros(3, 24), memory, keys, mask)
    assert float(attn[0, 3:].abs().max()) == 0.0 and torch.allclose(attn.sum(-1), torch.ones(3))


def test_beam_hypotheses_come_best_first_and_end_within_the_limit() -> None:
    model = small_model("gru", "bahdanau")
    step = TorchStep(model, torch.device("cpu"))
    with torch.no_grad():
        hyps = decode.beam(step, step.encode([[5, 6, 7, 8]]), np.array([9]), BOS, EOS, 5)[0]
    scores = [h.normalised(1.0) for h in hyps]
    assert scores == sorted(scores, reverse=True) and len(hyps) == 5
    assert all(len(h.tokens) <= 9 for h in hyps)


def test_tokenizers_round_trip(tmp_path: Path) -> None:
    texts = ["Guten Morgen, wie geht es dir?", "Good morning, how are you?"] * 50
    tok = Tokenizer("sentencepiece", train_sentencepiece(texts, 60, tmp_path / "sp.model"))
    assert tok.decode(tok.encode(texts[0])) == texts[0] and tok.pieces[:4] == ["<pad>", "<unk>", "<s>", "</s>"]
    chars = Tokenizer("chars", chars=char_inventory(texts))
    assert chars.decode(chars.encode(texts[1])) == texts[1]
    assert chars.encode("Ω") == [1]  # unseen: <unk>


def test_a_training_run_writes_its_metrics_and_split(translate_run: Path) -> None:
    m = json.loads((translate_run / "metrics.json").read_text())
    assert m["test_pairs"] == len((translate_run / "test.tsv").read_text().splitlines()) >= 40
    for key in ("greedy", "beam5"):
        assert {"chrf", "bleu", "ter", "signature"} <= set(m[key]) and "nc:6|nw:0" in m[key]["signature"]["chrf"]
    assert m["chrf"] == m["beam5"]["chrf"] and m["stopped_by"] in ("steps", "early_stopping")
    assert (translate_run / "tokenizer.model").exists() and (translate_run / "learning_curves.png").exists()


def test_export_passes_the_parity_gate_and_the_contract(translate_run: Path, tmp_path: Path) -> None:
    from training.tasks.translate.export import export_translate_run

    meta = export_translate_run(translate_run, tmp_path / "art")
    parity = meta["parity"]
    assert parity["passed"] and parity["greedy_sentences_differing"] == 0 and parity["beam5_sentences_differing"] == 0
    assert parity["alone_vs_batched_sentences_differing_ort"] == 0
    back = ArtifactMeta.from_dict(json.loads((tmp_path / "art/metadata.json").read_text()))
    assert back.task == "translate" and back.translation is not None
    assert set(back.translation.files_sha256) == {"encoder.onnx", "tokenizer.model"}
    for name in ("model.onnx", "encoder.onnx", "tokenizer.model", "reference.npz", "checkpoint.pt"):
        assert (tmp_path / "art" / name).exists(), name


def test_the_service_checks_the_exported_files_and_graphs(translate_run: Path, tmp_path: Path) -> None:
    from service.core.artifact import ReferenceMismatch
    from service.tasks.translate.spec import check_files, check_reference, swap_problem
    from training.onnx import cpu_session
    from training.tasks.translate.export import export_translate_run

    art = tmp_path / "art"
    export_translate_run(translate_run, art)
    meta = ArtifactMeta.from_dict(json.loads((art / "metadata.json").read_text()))
    check_files(art, meta)
    report = check_reference(cpu_session(art / "encoder.onnx"), cpu_session(art / "model.onnx"), art / "reference.npz")
    assert report["sentences"] == 3 and report["max_abs_diff_alone"] <= report["tolerance"]
    assert swap_problem(meta, meta) is None
    other = ArtifactMeta.from_dict(
        {**meta.to_dict(), "translation": {**meta.to_dict()["translation"], "vocab": ["x"] * 9}}
    )
    assert "tokenizer" in swap_problem(meta, other)
    (art / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(ReferenceMismatch, match="tokenizer.model has SHA-256"):
        check_files(art, meta)


def test_an_lstm_with_luong_attention_and_characters_exports_too(tmp_path: Path) -> None:
    """The other branches of the graphs (an LSTM's ``c``, general attention, a character vocabulary), from a run
    directory as training writes it."""
    from training.tasks.translate.export import export_translate_run

    run = tmp_path / "run"
    run.mkdir()
    pairs = [("Wie die Mutter, so die Tochter.", "Like mother, like daughter."), ("Es gibt sie.", "They exist.")]
    chars = char_inventory([s for p in pairs for s in p], min_count=1)
    torch.manual_seed(0)
    cfg = S2SConfig(len(chars) + 4, PAD, BOS, EOS, "lstm", "luong", 16, 24, 1, 2, 0.0)
    config = {"task": "translate", "model": cfg.to_dict(), "tokenizer": "chars", "chars": chars, "max_tokens": 40}
    torch.save({"model": Seq2Seq(cfg).state_dict(), "config": config}, run / "checkpoint.pt")
    (run / "config.json").write_text(json.dumps(config))
    (run / "test.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in pairs * 3), encoding="utf-8")
    meta = export_translate_run(run, tmp_path / "art")
    assert meta["parity"]["passed"] and meta["translation"]["rnn"] == "lstm"
    assert meta["translation"]["vocab"][4:] == chars and "tokenizer.model" not in meta["translation"]["files_sha256"]
    import onnx

    step = onnx.load(str(tmp_path / "art/model.onnx"))
    assert [i.name for i in step.graph.input] == ["token", "feed", "memory", "keys", "mask", "h", "c"]
    dims = step.graph.input[2].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_param  # batch and source length stay dynamic


def test_the_sampled_softmax_is_the_full_one_when_every_token_is_a_candidate() -> None:
    """Seq2Seq.loss over candidates: with every token a candidate and no correction it is the full softmax's loss;
    Candidates holds the batch's targets and pad, sorted, and corrects a rare token's logit more than a frequent
    one's."""
    model = small_model("gru", "bahdanau").eval()
    g = torch.Generator().manual_seed(2)
    x = padded([torch.randint(4, 40, (n,), generator=g).tolist() for n in (5, 9)])
    y = padded([[5, 6, 7], [8, 9, 10, 11, 12]], prefix=[BOS], suffix=[EOS])
    v = model.cfg.vocab_size
    with torch.no_grad():
        full, n = model.loss(x, torch.tensor([5, 9]), y[:, :-1], y[:, 1:], 0.1)
        every = (torch.arange(v), torch.zeros(v))
        sampled, _ = model.loss(x, torch.tensor([5, 9]), y[:, :-1], y[:, 1:], 0.1, every)
    assert torch.allclose(full, sampled, atol=1e-6) and int(n) == 10
    targets = [[5] * 50 + [6], [5] * 40 + [7]]
    cands = Candidates(targets, v, negatives=3, seed=0)
    ids, log_q = cands(y[:, 1:])
    assert torch.equal(ids, torch.sort(ids).values) and {PAD, EOS, 5, 6, 7, 12} <= set(ids.tolist())
    q = dict(zip(ids.tolist(), log_q.tolist()))
    assert q[5] > q[6] and q[5] > -0.01 and all(value <= 0 for value in q.values())
