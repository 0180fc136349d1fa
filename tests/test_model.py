"""Variable-length correctness in torch: a sequence's output does not depend on what it is batched with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from training import data
from training.tasks.classify.kernels import KernelFeatures, dilation_plan, fit_kernels, fit_ridge
from training.tasks.classify.model import MaskedBatchNorm1d, ModelConfig, SequenceClassifier, auto_stride

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
    dict(rnn="gru", bidirectional=True, attention="additive", stride=2, conv_channels=[8, 8], kernel_features=400),
    dict(rnn="gru", bidirectional=True, attention="additive", stride=1, normalisation="series", kernel_features=400),
]


def make_model(**kw: object) -> SequenceClassifier:
    torch.manual_seed(0)
    if kw.get("conv_channels"):
        kw = {"conv_kernels": [7, 5, 3][: len(kw["conv_channels"])], **kw}
    if kw.get("kernel_features"):
        kw = {"kernel_length": 40, **kw}
    cfg = ModelConfig(feature_dim=5, num_classes=4, hidden=16, layers=2, dropout=0.0, **kw)
    model = SequenceClassifier(cfg).eval()
    model.mean.copy_(torch.randn(5))
    model.std.copy_(torch.rand(5) + 0.5)
    if model.kernels is not None:  # biases from real quantiles, as training sets them
        fit_kernels(model.kernels, [torch.randn(n, 5) for n in (12, 40, 25)], seed=0)
        model.feature_mean.copy_(torch.rand_like(model.feature_mean))
        model.feature_std.copy_(torch.rand_like(model.feature_std) + 0.1)
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


def test_three_branches_fuse_by_adding_logits() -> None:
    kw = dict(rnn="gru", bidirectional=True, attention="additive", stride=1, conv_channels=[8, 8], kernel_features=400)
    model = make_model(**kw)
    rng = np.random.default_rng(3)
    logits, _ = run(model, [rng.normal(size=(9, 5)).astype(np.float32)])
    assert len(model.branch_logits) == 3
    np.testing.assert_allclose(logits, torch.stack(model.branch_logits).sum(0).numpy(), atol=1e-5)
    model.use_kernel_branch = False  # what training does while the kernel head is frozen
    neural, _ = run(model, [rng.normal(size=(9, 5)).astype(np.float32)])
    assert len(model.branch_logits) == 2


def test_kernel_plan_spans_the_length_and_the_feature_count() -> None:
    plan = dilation_plan(2000, 4000)
    assert plan[0][0] == 1 and plan[-1][0] <= (2000 - 1) // 8 and plan[-1][0] >= 128
    assert [d for d, _ in plan] == sorted({d for d, _ in plan})  # distinct, increasing
    assert 84 * sum(b for _, b in plan) == 84 * (4000 // 84)
    assert dilation_plan(9, 4000) == [(1, 4000 // 84)]  # a short series: dilation 1 only


def test_kernel_features_count_real_steps_only() -> None:
    """PPV is a proportion of a sequence's own steps: zeros or garbage beyond its length change nothing, and
    a series and its copy padded inside a longer batch get the same features."""
    torch.manual_seed(0)
    kf = KernelFeatures(channels=2, length=50, num_features=300, seed=1)
    fit_kernels(kf, [torch.randn(n, 2) for n in (50, 20, 33)], seed=0)
    s = torch.randn(13, 2)
    x = torch.zeros(2, 50, 2)
    x[0, :13] = s
    x[1] = torch.randn(50, 2)
    lengths = torch.tensor([13, 50])
    mask = torch.arange(50)[None] < lengths[:, None]
    batched = kf(x, mask, lengths)
    alone = kf(s[None], torch.ones(1, 13, dtype=torch.bool), lengths[:1])
    torch.testing.assert_close(batched[0], alone[0], atol=1e-6, rtol=0)
    assert batched.shape == (2, kf.num_features) and 0.0 <= float(batched.min()) and float(batched.max()) <= 1.0
    assert 0.2 < float(batched[1].mean()) < 0.8  # quantile biases: neither always nor never positive


def test_ridge_head_classifies_and_is_calibrated() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 40)) * 2.0
    y = rng.integers(0, 3, 60)
    f = torch.from_numpy(centres[y] + rng.normal(size=(60, 40))).float()
    fit = fit_ridge(f, torch.from_numpy(y), 3)
    assert fit["weight"].shape == (3, 40) and fit["bias"].shape == (3,)
    yt = rng.integers(0, 3, 200)
    ft = torch.from_numpy(centres[yt] + rng.normal(size=(200, 40))).float()
    logits = ft @ fit["weight"].T + fit["bias"]
    assert float((logits.argmax(1).numpy() == yt).mean()) > 0.9
    assert fit["temperature"] > 0.1 and fit["alpha"] in np.logspace(-3, 3, 10)


def test_series_normalised_data_is_detected() -> None:
    root = Path(__file__).resolve().parents[1] / "data"
    assert data.is_series_normalised(data.load(root / "ucr/GunPoint_TRAIN.ts"))
    assert not data.is_series_normalised(data.load(root / "ucr/BasicMotions_TRAIN.ts"))
    assert not data.is_series_normalised(data.load(root / "JapaneseVowels/JapaneseVowels_TRAIN.ts"))
    rng = np.random.default_rng(0)
    short = [rng.normal(size=(8, 2)) for _ in range(20)]  # z-normalised with the sample std, as UCR does
    short = [((x - x.mean(0)) / x.std(0, ddof=1)).astype(np.float32) for x in short]
    assert data.is_series_normalised(data.Dataset(short, ["a"] * 20))
