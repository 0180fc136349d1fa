"""The sequence classifier: normalise -> input projection -> (bi)RNN over packed sequences -> attention -> classes.

Variable length is exact: padded steps are zeroed, the RNN runs on a packed batch (``pack_padded_sequence``;
the TorchScript ONNX exporter turns it into native LSTM/GRU/RNN ops with ``sequence_lens``), and attention
scores on padding are masked, so a sequence's output does not depend on what it is batched with.

For long sequences a strided front end (``stride > 1``) shortens time before the RNN: a Conv1d with
kernel = stride = s turns T steps into ceil(T / s). Attention is computed on the shortened steps and spread
back over the input steps it covers, so the ``attention`` output always has the input's T.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

RNN_TYPES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


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
    stride: int = 1  # time reduction of the input projection

    def to_dict(self) -> dict:
        return asdict(self)


class SequenceClassifier(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.rnn not in RNN_TYPES:
            raise ValueError(f"rnn must be one of {sorted(RNN_TYPES)}, got {cfg.rnn!r}")
        if cfg.attention not in ("additive", "none"):
            raise ValueError(f"attention must be 'additive' or 'none', got {cfg.attention!r}")
        self.cfg = cfg
        h = cfg.hidden
        # Normalisation statistics from the training split travel inside the model (and the ONNX graph).
        self.register_buffer("mean", torch.zeros(cfg.feature_dim))
        self.register_buffer("std", torch.ones(cfg.feature_dim))
        self.proj = nn.Conv1d(cfg.feature_dim, h, kernel_size=cfg.stride, stride=cfg.stride)
        self.rnn = RNN_TYPES[cfg.rnn](
            h, h, num_layers=cfg.layers, batch_first=True, bidirectional=cfg.bidirectional,
            dropout=cfg.dropout if cfg.layers > 1 else 0.0,
        )
        out = h * (2 if cfg.bidirectional else 1)
        self.att_w = nn.Linear(out, h)
        self.att_v = nn.Linear(h, 1, bias=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(out, cfg.num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: float32 [B, T, F] zero-padded; lengths: int64 [B]. Returns logits [B, C], attention [B, T]."""
        s = self.cfg.stride
        T = x.shape[1]
        steps = torch.arange(T, device=x.device).unsqueeze(0)
        in_mask = steps < lengths.unsqueeze(1)  # [B, T]
        x = (x - self.mean) / self.std
        x = x * in_mask.unsqueeze(-1).to(x.dtype)  # padding is exactly zero, whatever the client sent
        if s > 1:
            x = F.pad(x, (0, 0, 0, s - 1))  # conv then yields ceil(T / s) steps
            lengths = torch.div(lengths + (s - 1), s, rounding_mode="floor")
        z = torch.relu(self.proj(x.transpose(1, 2))).transpose(1, 2)  # [B, T', H]
        Tr = z.shape[1]
        packed = pack_padded_sequence(z, lengths.cpu(), batch_first=True, enforce_sorted=False)
        packed_out, _ = self.rnn(packed)
        hseq, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=Tr)  # [B, T', D]
        mask = torch.arange(Tr, device=x.device).unsqueeze(0) < lengths.unsqueeze(1)
        if self.cfg.attention == "additive":
            scores = self.att_v(torch.tanh(self.att_w(hseq))).squeeze(-1)
            scores = scores.masked_fill(~mask, -1e9)
            att = torch.softmax(scores, dim=1) * mask.to(hseq.dtype)
            pooled = torch.bmm(att.unsqueeze(1), hseq).squeeze(1)
        else:  # last valid state: forward direction at step length-1, backward direction at step 0
            att = F.one_hot(lengths - 1, Tr).to(hseq.dtype)
            pooled = torch.bmm(att.unsqueeze(1), hseq).squeeze(1)
            if self.cfg.bidirectional:
                h = self.cfg.hidden
                pooled = torch.cat([pooled[:, :h], hseq[:, 0, h:]], dim=1)
        logits = self.head(self.drop(pooled))
        return logits, self._spread(att, s, T, in_mask)

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
