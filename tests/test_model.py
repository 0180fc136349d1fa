"""Variable-length correctness in torch: a sequence's output does not depend on what it is batched with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from training import data
from training.model import MaskedBatchNorm1d, ModelConfig, SequenceClassifier, auto_stride

CONFIGS = [
    dict(rnn="lstm", bidirectional=True, attention="additive", stride=1),
    dict(rnn="gru", bidirectional=True, attention="additive", stride=1),
    dict(rnn="rnn", bidirectional=False, attention="additive", stride=1),
    dict(rnn="lstm", bidirectional=True, attention="none", stride=1),
    dict(rnn="gru", bidirectional=False, attention="none", stride=1),
    dict(rnn="lstm", bidirectional=True, attention="additive", stride=4),
    dict(rnn="gru", bidirectional=True, attention="none", stride=3),
    dict(rnn="gru", bidirectional=True, attention="additive", stride=1, conv_channels=[8, 16, 8]),
    dict(
        rnn="gru", bidirectional=True, attention="additive", stride=1, conv_channels=[8, 16, 8], normalisation="series"
    ),
    dict(
        rnn="lstm", bidirectional=True, attention="additive", stride=4, conv_channels=[8, 8, 8], normalisation="series"
    ),
]


def make_model(**kw: object) -> SequenceClassifier:
    torch.manual_seed(0)
    cfg = ModelConfig(feature_dim=5, num_classes=4, hidden=16, layers=2, dropout=0.0, **kw)
    model = SequenceClassifier(cfg).eval()
    model.mean.copy_(torch.randn(5))
    model.std.copy_(torch.rand(5) + 0.5)
    for bn in model.bns:
        bn.running_mean.copy_(torch.randn_like(bn.running_mean))
        bn.running_var.copy_(torch.rand_like(bn.running_var) + 0.5)
    return model


def run(model: SequenceClassifier, seqs: list[np.ndarray], garbage: float = 0.0):
    x, lengths = data.pad(seqs)
    for i, s in enumerate(seqs):  # whatever sits in the padding must not matter
        x[i, len(s) :] = garbage
    with torch.no_grad():
        logits, att = model(torch.from_numpy(x), torch.from_numpy(lengths))
    return logits.numpy(), att.numpy()


@pytest.mark.parametrize("kw", CONFIGS, ids=lambda k: "-".join(str(v) for v in k.values()))
def test_alone_equals_batched_with_longer(kw: dict) -> None:
    model = make_model(**kw)
    rng = np.random.default_rng(0)
    short = [rng.normal(size=(n, 5)).astype(np.float32) for n in (1, 2, 5, 9)]
    long = [rng.normal(size=(n, 5)).astype(np.float32) for n in (40, 23)]
    for s in short:
        alone_logits, alone_att = run(model, [s])
        logits, att = run(model, [long[0], s, long[1]], garbage=123.0)
        np.testing.assert_allclose(logits[1], alone_logits[0], atol=1e-5)
        np.testing.assert_allclose(att[1, : len(s)], alone_att[0], atol=1e-6)
        assert np.all(att[1, len(s) :] == 0)  # no attention on padding
        np.testing.assert_allclose(att.sum(1), 1.0, atol=1e-5)


def test_plain_padded_birnn_would_be_wrong() -> None:
    """The reason for packing: a bidirectional GRU run over padding changes short sequences' outputs."""
    torch.manual_seed(0)
    rnn = torch.nn.GRU(5, 8, batch_first=True, bidirectional=True)
    s = torch.randn(1, 4, 5)
    padded = torch.cat([s, torch.zeros(1, 20, 5)], dim=1)
    with torch.no_grad():
        alone = rnn(s)[0][0, 0]
        batched = rnn(padded)[0][0, 0]
    assert (alone - batched).abs().max() > 1e-4


def test_auto_stride() -> None:
    assert auto_stride(29) == 1
    assert auto_stride(128) == 1
    assert auto_stride(129) == 2
    assert auto_stride(1300) == 11


def test_series_normalisation_ignores_offset_and_scale() -> None:
    """With per-series normalisation, a sequence shifted and scaled per channel gets the same output."""
    model = make_model(
        rnn="gru", bidirectional=True, attention="additive", stride=1, conv_channels=[8, 8, 8], normalisation="series"
    )
    rng = np.random.default_rng(1)
    s = rng.normal(size=(17, 5)).astype(np.float32)
    moved = (s * np.float32([3, 0.5, 10, 1, 2]) + np.float32([100, -4, 0.3, 7, 0])).astype(np.float32)
    a_logits, a_att = run(model, [s])
    b_logits, b_att = run(model, [moved, rng.normal(size=(30, 5)).astype(np.float32)])
    np.testing.assert_allclose(b_logits[0], a_logits[0], atol=1e-4)
    np.testing.assert_allclose(b_att[0, :17], a_att[0], atol=1e-5)


def test_masked_batch_norm_uses_real_steps_only() -> None:
    """Training statistics of a padded batch equal those of its real steps (padding would pull them to 0)."""
    torch.manual_seed(0)
    bn = MaskedBatchNorm1d(3, momentum=1.0).train()
    x = torch.randn(2, 3, 10) + 5.0
    mask = torch.tensor([[True] * 10, [True] * 4 + [False] * 6])
    x[1, :, 4:] = 0.0
    out = bn(x, mask)
    real = torch.cat([x[0], x[1, :, :4]], dim=1)  # [3, 14]
    np.testing.assert_allclose(bn.running_mean.numpy(), real.mean(1).numpy(), rtol=1e-5)
    np.testing.assert_allclose(bn.running_var.numpy(), real.var(1, unbiased=True).numpy(), rtol=1e-4)
    normed = torch.cat([out[0], out[1, :, :4]], dim=1)
    np.testing.assert_allclose(normed.mean(1).detach().numpy(), 0.0, atol=1e-5)


def test_branches_fuse_by_adding_logits() -> None:
    model = make_model(rnn="gru", bidirectional=True, attention="additive", stride=1, conv_channels=[8, 8, 8])
    rng = np.random.default_rng(2)
    logits, _ = run(model, [rng.normal(size=(9, 5)).astype(np.float32)])
    rnn_logits, conv_logits = model.branch_logits
    np.testing.assert_allclose(logits, (rnn_logits + conv_logits).numpy(), atol=1e-6)


def test_series_normalised_data_is_detected() -> None:
    root = Path(__file__).resolve().parents[1] / "data"
    assert data.is_series_normalised(data.load(root / "ucr/GunPoint_TRAIN.ts"))
    assert not data.is_series_normalised(data.load(root / "ucr/BasicMotions_TRAIN.ts"))
    assert not data.is_series_normalised(data.load(root / "JapaneseVowels/JapaneseVowels_TRAIN.ts"))
    rng = np.random.default_rng(0)
    short = [rng.normal(size=(8, 2)) for _ in range(20)]  # z-normalised with the sample std, as UCR does
    short = [((x - x.mean(0)) / x.std(0, ddof=1)).astype(np.float32) for x in short]
    assert data.is_series_normalised(data.Dataset(short, ["a"] * 20))
