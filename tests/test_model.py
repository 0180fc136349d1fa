"""Variable-length correctness in torch: a sequence's output does not depend on what it is batched with."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training import data
from training.model import ModelConfig, SequenceClassifier, auto_stride

CONFIGS = [
    dict(rnn="lstm", bidirectional=True, attention="additive", stride=1),
    dict(rnn="gru", bidirectional=True, attention="additive", stride=1),
    dict(rnn="rnn", bidirectional=False, attention="additive", stride=1),
    dict(rnn="lstm", bidirectional=True, attention="none", stride=1),
    dict(rnn="gru", bidirectional=False, attention="none", stride=1),
    dict(rnn="lstm", bidirectional=True, attention="additive", stride=4),
    dict(rnn="gru", bidirectional=True, attention="none", stride=3),
]


def make_model(**kw: object) -> SequenceClassifier:
    torch.manual_seed(0)
    cfg = ModelConfig(feature_dim=5, num_classes=4, hidden=16, layers=2, dropout=0.0, **kw)
    model = SequenceClassifier(cfg).eval()
    model.mean.copy_(torch.randn(5))
    model.std.copy_(torch.rand(5) + 0.5)
    return model


def run(model: SequenceClassifier, seqs: list[np.ndarray], garbage: float = 0.0):
    x, lengths = data.pad(seqs)
    for i, s in enumerate(seqs):  # whatever sits in the padding must not matter
        x[i, len(s):] = garbage
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
        assert np.all(att[1, len(s):] == 0)  # no attention on padding
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
