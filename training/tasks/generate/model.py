"""The character language model: embedding -> LSTM/GRU (1-3 layers) -> [projection] -> output layer.

One class, as pytorch/examples' ``word_language_model``. ``tied`` shares the input embedding with the output
layer (Press & Wolf 2017; Inan et al. 2017); when the RNN is wider than the embedding, a linear projection
brings its output down to the embedding width first, which also makes the output layer cheaper for a large
vocabulary (a 6,939-character one: 256 x V instead of 512 x V per character).

``StepGraph`` is what export puts into ONNX: advance each stream by its own number of real tokens (1..K) from
the state it brings, return the log-probabilities after its last real token and the state there. The RNN runs
on a packed batch, which the TorchScript exporter turns into native ONNX LSTM/GRU ops with ``sequence_lens``:
each stream's state stops at its length, so it is the same alone and in any batch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

RNN_TYPES = {"lstm": nn.LSTM, "gru": nn.GRU}

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # GRU: h; LSTM: (h, c), each [layers, B, hidden]


@dataclass
class LMConfig:
    vocab_size: int
    rnn: str = "lstm"
    embedding: int = 64
    hidden: int = 512
    layers: int = 2
    dropout: float = 0.1
    tied: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


class CharLM(nn.Module):
    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        if cfg.rnn not in RNN_TYPES:
            raise ValueError(f"rnn must be one of {sorted(RNN_TYPES)}, got {cfg.rnn!r}")
        if not 1 <= cfg.layers <= 3:
            raise ValueError(f"layers must be 1..3, got {cfg.layers}")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embedding)
        dropout = cfg.dropout if cfg.layers > 1 else 0.0
        self.rnn = RNN_TYPES[cfg.rnn](cfg.embedding, cfg.hidden, cfg.layers, batch_first=True, dropout=dropout)
        self.drop = nn.Dropout(cfg.dropout)
        self.proj = nn.Linear(cfg.hidden, cfg.embedding) if cfg.tied and cfg.hidden != cfg.embedding else None
        self.decoder = nn.Linear(cfg.embedding if cfg.tied else cfg.hidden, cfg.vocab_size)
        if cfg.tied:
            self.decoder.weight = self.embed.weight
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)

    def forward(self, tokens: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """tokens [B, T] -> logits [B, T, V] and the state after the last step."""
        out, state = self.rnn(self.drop(self.embed(tokens)), state)
        return self.head(self.drop(out)), state

    def head(self, out: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.proj(out) if self.proj is not None else out)

    def zero_state(self, batch: int, device: torch.device | None = None) -> State:
        h = torch.zeros(self.cfg.layers, batch, self.cfg.hidden, device=device)
        return (h, torch.zeros_like(h)) if self.cfg.rnn == "lstm" else h


def detach(state: State) -> State:
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


class StepGraph(nn.Module):
    """``(tokens [B, K], lengths [B], h, [c]) -> (log_probs [B, V], h, [c])`` for export (see module doc)."""

    def __init__(self, model: CharLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m = self.model
        # The ONNX RNN ops take unsorted sequence_lens: the sort that packing needs in torch stays out of the
        # graph (the export example is sorted), as in the classifier (training/tasks/classify/model.py).
        sort = not torch.onnx.is_in_onnx_export()
        packed = pack_padded_sequence(m.embed(tokens), lengths.cpu(), batch_first=True, enforce_sorted=not sort)
        _, new = m.rnn(packed, (state[0], state[1]) if m.cfg.rnn == "lstm" else state[0])
        new = new if isinstance(new, tuple) else (new,)
        log_probs = F.log_softmax(m.head(new[0][-1]), dim=-1)  # the last layer's state at each last real step
        return (log_probs, *new)
