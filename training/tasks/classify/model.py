"""The sequence classifier: normalise -> convolutional blocks -> (bi)RNN + attention, fused with a pooled conv head.

A convolutional-recurrent network in the LSTM-FCN family (Karim et al. 2017/2019; FCN: Wang et al. 2017):

* **convolutional blocks** (FCN): ``conv_channels`` x (Conv1d with "same" padding and odd kernels
  ``conv_kernels`` -> batch norm -> ReLU) over the full-resolution input. Their features feed two heads:
* a **conv head**: masked global average pool over each sequence's own steps -> linear -> logits;
* the **recurrent head**: a strided projection (kernel = stride = ``stride``, computed as reshape + MatMul;
  shortens long sequences to at most ~128 RNN steps) -> packed (bi)RNN/LSTM/GRU -> additive attention (or the
  last valid state) -> linear -> logits. The attention weights are the model's explanation, mapped back onto
  the input steps.

The two heads' logits add up (late fusion); training also gives each head its own loss (``branch_logits``).
With ``conv_channels=[]`` the model is the plain RNN with attention over the raw input.

Variable length is exact, so a sequence's output does not depend on what it is batched with:

* normalisation is either ``global`` (training-split mean/std per channel) or ``series`` (each sequence
  z-normalised per channel over its own real steps only); the choice is part of the config and the graph;
* every step beyond a sequence's length is zeroed after normalisation and after every convolution block,
  so a "same" convolution sees the same zeros at a sequence's end whether it is alone or padded; the
  average pool divides by the real length; batch norm uses only real steps for its training statistics;
* the RNN runs on a packed batch (``pack_padded_sequence``; the TorchScript ONNX exporter turns it into
  native LSTM/GRU/RNN ops with ``sequence_lens``) and attention scores on padding are masked.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from training import data
from training.tasks.classify.kernels import KernelFeatures, fit_kernels, fit_ridge

RNN_TYPES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
NORMALISATIONS = ("global", "series")


@dataclass
class ModelConfig:
    feature_dim: int
    num_classes: int
    rnn: str = "lstm"
    hidden: int = 128
    layers: int = 2
    bidirectional: bool = True
    attention: str = "additive"  # or "none": use the last valid hidden state
    dropout: float = 0.2
    stride: int = 1  # time reduction of the RNN head's input projection
    conv_channels: list[int] = field(default_factory=list)  # convolutional block widths; [] = none
    conv_kernels: list[int] = field(default_factory=lambda: [7, 5, 3])
    normalisation: str = "global"  # or "series": per-sequence, per-channel z-normalisation
    kernel_features: int = 0  # fixed random-kernel (MiniRocket) branch: about this many features; 0 = none
    kernel_length: int = 0  # the sequence length its dilations span (the longest training sequence)
    kernel_seed: int = 0  # its kernels' channel subsets

    def to_dict(self) -> dict:
        return asdict(self)


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """Batch norm whose training statistics come from real steps only (padding would bias them).

    In eval mode it is the plain running-statistics affine map (exported as ONNX BatchNormalization, which
    ONNX Runtime folds into the preceding Conv)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # x [B, C, T]
        if not self.training or mask is None:
            return super().forward(x)
        m = mask.unsqueeze(1).to(x.dtype)  # [B, 1, T]
        n = m.sum().clamp_min(2.0)
        mean = (x * m).sum((0, 2)) / n
        var = (((x - mean[None, :, None]) * m) ** 2).sum((0, 2)) / n
        with torch.no_grad():
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * n / (n - 1), self.momentum)
            self.num_batches_tracked += 1
        xn = (x - mean[None, :, None]) / torch.sqrt(var[None, :, None] + self.eps)
        return xn * self.weight[None, :, None] + self.bias[None, :, None]


class SequenceClassifier(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.rnn not in RNN_TYPES:
            raise ValueError(f"rnn must be one of {sorted(RNN_TYPES)}, got {cfg.rnn!r}")
        if cfg.attention not in ("additive", "none"):
            raise ValueError(f"attention must be 'additive' or 'none', got {cfg.attention!r}")
        if cfg.normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {cfg.normalisation!r}")
        if cfg.conv_channels and len(cfg.conv_kernels) != len(cfg.conv_channels):
            raise ValueError("conv_kernels must give one kernel size per conv_channels entry")
        if any(k % 2 == 0 for k in cfg.conv_kernels):
            raise ValueError(f"conv_kernels must be odd (centred 'same' padding), got {cfg.conv_kernels}")
        self.cfg = cfg
        h = cfg.hidden
        # Global normalisation statistics of the training split travel inside the model (and the ONNX graph);
        # with "series" normalisation they are kept for drift monitoring only.
        self.register_buffer("mean", torch.zeros(cfg.feature_dim))
        self.register_buffer("std", torch.ones(cfg.feature_dim))
        self.convs = nn.ModuleList()
        self.bns = nn.ModuleList()
        width = cfg.feature_dim
        for c, k in zip(cfg.conv_channels, cfg.conv_kernels):
            self.convs.append(nn.Conv1d(width, c, kernel_size=k, padding=k // 2, bias=False))
            self.bns.append(MaskedBatchNorm1d(c))
            width = c
        rnn_in = cfg.conv_channels[-1] if cfg.conv_channels else cfg.feature_dim
        self.proj = nn.Conv1d(rnn_in, h, kernel_size=cfg.stride, stride=cfg.stride)
        self.rnn = RNN_TYPES[cfg.rnn](
            h,
            h,
            num_layers=cfg.layers,
            batch_first=True,
            bidirectional=cfg.bidirectional,
            dropout=cfg.dropout if cfg.layers > 1 else 0.0,
        )
        out = h * (2 if cfg.bidirectional else 1)
        self.att_w = nn.Linear(out, h)
        self.att_v = nn.Linear(h, 1, bias=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(out, cfg.num_classes)
        self.conv_head = nn.Linear(cfg.conv_channels[-1], cfg.num_classes) if cfg.conv_channels else None
        self.kernels = None
        self.use_kernel_branch = True  # training leaves a closed-form (frozen) kernel head out of its passes
        if cfg.kernel_features:  # fixed features, standardised with training-set statistics, then linear
            self.kernels = KernelFeatures(cfg.feature_dim, cfg.kernel_length, cfg.kernel_features, cfg.kernel_seed)
            self.register_buffer("feature_mean", torch.zeros(self.kernels.num_features))
            self.register_buffer("feature_std", torch.ones(self.kernels.num_features))
            self.kernel_head = nn.Linear(self.kernels.num_features, cfg.num_classes)
        self.branch_logits: tuple[torch.Tensor, ...] = ()  # last forward's per-branch logits (training losses)

    def normalise(self, x: torch.Tensor, in_mask: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Normalised input with every padded step exactly zero, whatever the client sent there."""
        m = in_mask.unsqueeze(-1).to(x.dtype)  # [B, T, 1]
        if self.cfg.normalisation == "series":
            x = x * m
            n = lengths.to(x.dtype).view(-1, 1, 1)
            mu = x.sum(1, keepdim=True) / n
            sd = torch.sqrt((((x - mu) * m) ** 2).sum(1, keepdim=True) / n)
            sd = torch.where(sd < 1e-6, torch.ones_like(sd), sd)  # a constant channel stays at zero
            x = (x - mu) / sd
        else:
            x = (x - self.mean) / self.std
        return x * m

    def conv_features(self, x: torch.Tensor, in_mask: torch.Tensor) -> torch.Tensor:
        """FCN blocks over the full-resolution input -> [B, T, C_last], zero beyond each length."""
        m = in_mask.unsqueeze(1).to(x.dtype)  # [B, 1, T]
        z = x.transpose(1, 2)
        for conv, bn in zip(self.convs, self.bns):
            z = torch.relu(bn(conv(z), in_mask)) * m
        return z.transpose(1, 2)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: float32 [B, T, F] zero-padded; lengths: int64 [B]. Returns logits [B, C], attention [B, T]."""
        s = self.cfg.stride
        T = x.shape[1]
        steps = torch.arange(T, device=x.device).unsqueeze(0)
        in_mask = steps < lengths.unsqueeze(1)  # [B, T]
        x = x_norm = self.normalise(x, in_mask, lengths)
        pooled_conv = None
        if self.cfg.conv_channels:
            x = self.conv_features(x, in_mask)
            pooled_conv = x.sum(1) / lengths.to(x.dtype).unsqueeze(1)  # masked global average pool
        z, rlen = self.project(x, lengths)  # [B, T', H]
        Tr = z.shape[1]
        # The ONNX RNN ops take unsorted ``sequence_lens``: the sort that packing needs in torch is left out of
        # the graph (the example batch is sorted), so the graph has no TopK/Gather/Scatter around the RNN.
        sort = not torch.onnx.is_in_onnx_export()
        packed = pack_padded_sequence(z, rlen.cpu(), batch_first=True, enforce_sorted=not sort)
        packed_out, _ = self.rnn(packed)
        hseq, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=Tr)  # [B, T', D]
        mask = torch.arange(Tr, device=x.device).unsqueeze(0) < rlen.unsqueeze(1)
        if self.cfg.attention == "additive":
            scores = self.att_v(torch.tanh(self.att_w(hseq))).squeeze(-1)
            scores = scores.masked_fill(~mask, -1e9)
            att = torch.softmax(scores, dim=1) * mask.to(hseq.dtype)
            pooled = torch.bmm(att.unsqueeze(1), hseq).squeeze(1)
        else:  # last valid state: forward direction at step length-1, backward direction at step 0
            att = F.one_hot(rlen - 1, Tr).to(hseq.dtype)
            pooled = torch.bmm(att.unsqueeze(1), hseq).squeeze(1)
            if self.cfg.bidirectional:
                h = self.cfg.hidden
                pooled = torch.cat([pooled[:, :h], hseq[:, 0, h:]], dim=1)
        logits = self.head(self.drop(pooled))
        branches = [logits]
        if self.conv_head is not None:
            branches.append(self.conv_head(self.drop(pooled_conv)))
        if self.kernels is not None and self.use_kernel_branch:
            branches.append(self.kernel_head(self.kernel_features(x_norm, in_mask, lengths)))
        if len(branches) > 1:  # late fusion: the branches' logits add up (a product of experts)
            self.branch_logits = tuple(branches)
            logits = torch.stack(branches).sum(0)
        return logits, self._spread(att, s, T, in_mask)

    def kernel_features(self, x: torch.Tensor, in_mask: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The fixed kernels' features of the normalised input, standardised (no gradient flows into them)."""
        with torch.no_grad():
            f = self.kernels(x, in_mask, lengths)
        return (f - self.feature_mean) / self.feature_std

    def project(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The RNN head's input projection: ``proj`` (a Conv1d whose kernel equals its stride) computed as
        reshape + MatMul over ceil(T / s) windows of s steps, which is what the ONNX graph gets (a MatMul runs
        well on every provider; cuDNN ran this Conv in a slow fallback). Returns (z [B, T', H], lengths')."""
        s = self.cfg.stride
        B, T, C = x.shape
        Tr = (T + s - 1) // s
        rlen = torch.div(lengths + (s - 1), s, rounding_mode="floor") if s > 1 else lengths
        if s > 1:
            x = F.pad(x, (0, 0, 0, s - 1))[:, : Tr * s]
        w = self.proj.weight  # [H, C, s] -> [s * C, H], matching x's [.., s, C] window layout
        w = w.permute(2, 1, 0).reshape(s * C, w.shape[0])
        z = torch.matmul(x.reshape(B, Tr, s * C), w) + self.proj.bias
        return torch.relu(z), rlen

    @staticmethod
    def _spread(att: torch.Tensor, s: int, T: int, in_mask: torch.Tensor) -> torch.Tensor:
        """Map attention over shortened steps back onto the T input steps (sums to 1 over valid steps)."""
        if s == 1:
            return att
        full = att.unsqueeze(-1).expand(-1, -1, s).reshape(att.shape[0], -1)[:, :T]
        full = full * in_mask.to(att.dtype)
        return full / full.sum(dim=1, keepdim=True).clamp_min(1e-12)


class ExportWrapper(nn.Module):
    """What goes into ONNX: probabilities instead of logits."""

    def __init__(self, model: SequenceClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, att = self.model(x, lengths)
        return torch.softmax(logits, dim=1), att


def auto_stride(max_length: int, target_steps: int = 128) -> int:
    """Smallest stride that brings the longest training sequence to at most ``target_steps`` RNN steps."""
    return max(1, -(-max_length // target_steps))


def load_checkpoint(path: str) -> tuple[SequenceClassifier, dict]:
    """Load ``checkpoint.pt`` (weights_only) and return the model in eval mode and the saved config."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = SequenceClassifier(ModelConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, ckpt


def to_tensors(
    ds: data.Dataset, idx: np.ndarray | list[int], class_index: dict[str, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, lengths = data.pad([ds.sequences[i] for i in idx])
    y = torch.tensor([class_index[ds.labels[i]] for i in idx], dtype=torch.long)
    return torch.from_numpy(x), torch.from_numpy(lengths), y


@torch.no_grad()
def kernel_branch_logits(model: SequenceClassifier, ds: data.Dataset, batch_size: int = 16) -> torch.Tensor:
    """The kernel branch's logits for every sequence of ``ds``, in its order: [N, classes]."""
    model.eval()
    out = []
    for i in range(0, len(ds), batch_size):
        x, lengths, _ = to_tensors(ds, np.arange(i, min(i + batch_size, len(ds))), {c: 0 for c in ds.labels})
        mask = torch.arange(x.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
        out.append(model.kernel_head(model.kernel_features(model.normalise(x, mask, lengths), mask, lengths)))
    return torch.cat(out)


RIDGE_MAX_SEQUENCES = 4000  # above this the kernel head is trained with the rest (an n x n eigensolve)


@torch.no_grad()
def fit_kernel_branch(
    model: SequenceClassifier, ds: data.Dataset, class_index: dict[str, int], seed: int, fit_biases: bool = True
) -> dict:
    """Set the kernel branch up from the training split: its biases (quantiles on training sequences, unless
    warm-started), its features' mean and std, and (up to RIDGE_MAX_SEQUENCES) its head in closed form,
    frozen. Returns what was fitted, for metrics.json."""
    model.eval()
    if fit_biases:
        normalised = []
        for s in ds.sequences:
            x = torch.from_numpy(np.asarray(s, dtype=np.float32)).unsqueeze(0)
            steps = torch.ones(1, x.shape[1], dtype=torch.bool)
            normalised.append(model.normalise(x, steps, torch.tensor([x.shape[1]]))[0])
        fit_kernels(model.kernels, normalised, seed)
    feats, ys = [], []
    for i in range(0, len(ds), 16):
        x, lengths, y = to_tensors(ds, np.arange(i, min(i + 16, len(ds))), class_index)
        mask = torch.arange(x.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
        feats.append(model.kernels(model.normalise(x, mask, lengths), mask, lengths))
        ys.append(y)
    f, y = torch.cat(feats), torch.cat(ys)
    model.feature_mean.copy_(f.mean(0))
    model.feature_std.copy_(f.std(0).clamp_min(1e-3))
    if len(ds) > RIDGE_MAX_SEQUENCES:
        return {"kernel_head": "gradient"}
    ridge = fit_ridge((f - model.feature_mean) / model.feature_std, y, model.cfg.num_classes)
    model.kernel_head.weight.copy_(ridge["weight"])
    model.kernel_head.bias.copy_(ridge["bias"])
    model.kernel_head.requires_grad_(False)
    fitted = {"kernel_head": "ridge", "kernel_head_sequences": len(ds)}
    return fitted | {"ridge_alpha": ridge["alpha"], "ridge_temperature": ridge["temperature"]}
