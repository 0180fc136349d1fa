"""The training CLI end to end on real data (small settings), reproducibility, tuning."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.__main__ import main
from training.loop import lr_factor, plan_epochs
from training.tasks.classify.model import load_checkpoint
from training.tasks.classify.train import add_train_args, mixup

ROOT = Path(__file__).resolve().parents[1]
JV_TRAIN = str(ROOT / "data/JapaneseVowels/JapaneseVowels_TRAIN.ts")
JV_TEST = str(ROOT / "data/JapaneseVowels/JapaneseVowels_TEST.ts")
SMALL = ["--train", JV_TRAIN, "--test", JV_TEST, "--hidden", "16", "--layers", "1", "--epochs", "3", "--quiet"]


def test_small_run_writes_everything(small_run: Path) -> None:
    for name in ("checkpoint.pt", "config.json", "metrics.json", "learning_curves.png"):
        assert (small_run / name).stat().st_size > 0, name
    m = json.loads((small_run / "metrics.json").read_text())
    for key in ("test_accuracy", "test_macro_f1", "val_accuracy", "epochs", "train_seconds", "history"):
        assert key in m
    assert len(m["history"]) == m["epochs"] and m["n_test"] == 370
    assert m["test_accuracy"] > 0.6  # 8 epochs of a tiny model: far above chance (1/9)
    ckpt = torch.load(small_run / "checkpoint.pt", weights_only=True)
    assert ckpt["classes"] == [str(i) for i in range(1, 10)] and ckpt["max_length"] == 29
    assert ckpt["length_range"] == [7, 26]  # the training file's own range, kept for monitoring
    assert m["normalisation"] == "global" and m["selected_on"] == "training" and m["device"] == "cpu"
    model, _ = load_checkpoint(str(small_run / "checkpoint.pt"))
    assert model.cfg.rnn == "gru" and not model.training and model.cfg.conv_channels == [128, 256, 128]
    # The fixed-kernel branch: biases and feature statistics from the training split, the head in closed form.
    assert model.cfg.kernel_features == 4000 and model.cfg.kernel_length == 26 and model.kernels is not None
    assert m["kernel_head"] == "ridge" and m["ridge_alpha"] > 0 and m["ridge_temperature"] > 0
    assert m["kernel_head_sequences"] == m["n_train"] == 270  # under 300 sequences nothing is held out
    assert float(model.feature_std.min()) > 0 and float(model.kernels.bias0.abs().sum()) > 0
    assert model.use_kernel_branch  # training turns it off while the head is frozen; the saved model has it
    assert (small_run / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_kernel_head_is_fitted_again_on_every_training_sequence(tmp_path: Path) -> None:
    """A validation split chooses the network's epoch; then the closed-form kernel head sees all the training data
    (its feature statistics too), as MiniRocket's would."""
    from training import data
    from training.tasks.classify.model import to_tensors

    argv = ["train", *SMALL, "--epochs", "1", "--val-fraction", "0.2", "--conv-channels", "none"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["n_val"] > 0 and m["n_train"] + m["n_val"] == 270 and m["kernel_head_sequences"] == 270
    model, _ = load_checkpoint(str(tmp_path / "checkpoint.pt"))
    full = data.load(JV_TRAIN)
    x, lengths, _ = to_tensors(full, np.arange(len(full)), {c: i for i, c in enumerate(full.classes)})
    mask = torch.arange(x.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
    with torch.no_grad():
        feats = model.kernels(model.normalise(x, mask, lengths), mask, lengths)
    assert torch.allclose(model.feature_mean, feats.mean(0), atol=1e-5)


def test_same_seed_same_model(tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert main(["train", *SMALL, "--out", str(tmp_path / name), "--seed", "5", "--threads", "1"]) == 0
    a = torch.load(tmp_path / "a/checkpoint.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b/checkpoint.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in "ab")
    assert ma["test_accuracy"] == mb["test_accuracy"]


def test_bad_data_file_is_a_clear_error(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"sequence": [[1]], "label": "a"}\nnot json\n')
    assert main(["train", "--train", str(bad), "--test", str(bad), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert f"{bad}:2: invalid JSON" in capsys.readouterr().err


def test_tune_writes_leaderboard_and_best(tmp_path: Path) -> None:
    assert main(["tune", *SMALL, "--epochs", "2", "--trials", "2", "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "leaderboard.csv").open()))
    assert len(rows) == 2 and {"rnn", "hidden", "layers", "lr", "dropout", "val_accuracy"} <= set(rows[0])
    vals = [float(r["val_accuracy"]) for r in rows]
    assert vals == sorted(vals, reverse=True)  # ranked on validation
    assert (tmp_path / "best/checkpoint.pt").exists()
    best_cfg = json.loads((tmp_path / "best/config.json").read_text())["model_config"]
    assert best_cfg["hidden"] == int(rows[0]["hidden"]) and best_cfg["rnn"] == rows[0]["rnn"]


def test_time_budget_ends_training(tmp_path: Path) -> None:
    """With an epoch cap that can never be reached, the wall-clock budget ends training."""
    argv = [
        "train",
        "--train",
        JV_TRAIN,
        "--test",
        JV_TEST,
        "--hidden",
        "16",
        "--conv-channels",
        "8,8,8",
        "--epochs",
        "1000000",
        "--time-budget",
        "3",
        "--quiet",
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert 1 <= m["epochs"] < 1000000 and m["train_seconds"] < 30
    assert (tmp_path / "checkpoint.pt").exists()
    assert m["stopped_by"] == "time_budget" and m["time_budget_cut"] and m["time_budget"] == 3


def test_default_schedule_does_not_depend_on_machine_load(tmp_path: Path, capsys) -> None:
    """Issue 29: no wall-clock budget unless asked: the run spans ``--epochs`` on any machine, the progress lines
    keep one total, and with no validation split the log does not call its figure validation accuracy."""
    parser = argparse.ArgumentParser()
    add_train_args(parser)
    assert parser.parse_args([]).time_budget == 0
    argv = ["train", *SMALL[:-1], "--epochs", "4", "--patience", "100", "--val-fraction", "0", "--out", str(tmp_path)]
    assert main(argv) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["epochs"] == 4 and m["stopped_by"] == "epochs" and not m["time_budget_cut"]
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("epoch ")]
    assert [x.split()[1] for x in lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert all("train_acc" in x and "val_acc" not in x for x in lines)


def test_schedule_is_planned_from_epoch_time() -> None:
    # 10 epochs took 20 s and 30 s are left: 15 more fit; never past the cap, always at least one more.
    assert plan_epochs(10, 20.0, 30.0, 200) == 25
    assert plan_epochs(10, 20.0, 3000.0, 200) == 200
    assert plan_epochs(10, 20.0, -5.0, 200) == 11
    # warm-up rises to the peak, cosine decay ends at 1% on the planned epoch
    assert lr_factor(1, 100, 5) < lr_factor(5, 100, 5) < 1.0
    assert lr_factor(6, 100, 5) == pytest.approx(1.0, abs=1e-3)
    assert lr_factor(100, 100, 5) == pytest.approx(0.01)
    factors = [lr_factor(e, 100, 5) for e in range(6, 101)]
    assert factors == sorted(factors, reverse=True)


def test_mixup_mixes_only_sequences_of_equal_length() -> None:
    x = torch.stack([torch.full((5, 2), float(i)) for i in range(6)])
    y = torch.arange(6)
    lengths = torch.tensor([5, 5, 5, 3, 4, 4])
    for seed in range(20):
        mixed, partner, lam = mixup(x, y, lengths, 0.4, np.random.default_rng(seed))
        assert 0.5 <= lam <= 1.0
        for i in range(6):
            j = int(partner[i])
            assert lengths[j] == lengths[i]  # never mixed with a sequence of another length
            assert torch.allclose(mixed[i], lam * x[i] + (1 - lam) * x[j])
        assert int(partner[3]) == 3  # the only length-3 sequence stays itself


def test_cuda_request_without_cuda_is_a_clear_error(tmp_path: Path, capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the error path is for machines without it")
    assert main(["train", *SMALL, "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "--device cuda: CUDA is not usable here" in capsys.readouterr().err


def test_eval_suite_short(tmp_path: Path) -> None:
    """CI's short version of `make eval`: one small UCR set, one seed, a short budget; report and JSON."""
    out = tmp_path / "accuracy.md"
    assert (
        main(["eval", "--datasets", "ItalyPowerDemand", "--seeds", "0", "--time-budget", "8", "--out", str(out)]) == 0
    )
    report = json.loads(out.with_suffix(".json").read_text())
    row = report["datasets"][0]
    assert row["dataset"] == "ItalyPowerDemand" and row["length_min"] == row["length_max"] == 24
    assert row["classes"] == 2 and row["test"] == 1029 and row["normalisation"] == "series"
    assert row["accuracy_median"] > 0.85  # ~0.95 after 8 s; chance is 0.5
    text = out.read_text()
    assert "| ItalyPowerDemand | 67/1029 | 1 | 24 | 2 |" in text and "0.970 (W)" in text


def test_options_that_do_not_fit_are_a_clear_error(tmp_path: Path, capsys) -> None:
    argv = ["train", *SMALL, "--conv-channels", "8,8,8", "--conv-kernels", "4,3,3", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "conv_kernels must be odd" in capsys.readouterr().err
