"""The text classifier: the generation task's language model (``CharLM``: embedding -> LSTM/GRU) read as an encoder,
concat pooling over its last layer's states, and a small head (ULMFiT, Howard & Ruder 2018).

* **Encoder.** ``CharLM.embed`` and ``CharLM.rnn`` as they are: a pre-trained LM's weights load into them
  unchanged (``from_lm``), the LM's output layer is dropped. From scratch, the same modules start random.
* **Pooling.** ``[h_last, max_t h_t, mean_t h_t, sum_t a_t h_t]`` over each text's own tokens: ULMFiT's concat
  pooling plus an attention pool whose weights ``a`` are what the service returns per token (how much each
  token's state went into the answer). Padding never enters: the RNN runs packed, max/mean/attention are masked.
* **Head.** dropout -> linear -> ReLU -> dropout -> linear to the classes.

``ExportGraph`` is what goes into ONNX: ``x`` float32 ``[B, T, 1]`` (token ids as floats: the core's batching
pads float32 rows, and ids below 2**24 are exact) and ``lengths`` int64 -> ``probabilities`` ``[B, C]`` and
``attention`` ``[B, T]`` (zero beyond each length).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from training.tasks.generate.model import CharLM, LMConfig


@dataclass
class ClfConfig:
    lm: dict  # the encoder's LMConfig (vocab size, rnn, embedding, hidden, layers, dropout)
    classes: int
    head_hidden: int = 64
    dropout: float = 0.3
    encoder_dropout: float = -1.0  # on the embeddings, between and after the RNN layers (< 0: the LM's own)

    def to_dict(self) -> dict:
        return asdict(self)


class TextClassifier(nn.Module):
    def __init__(self, cfg: ClfConfig) -> None:
        super().__init__()
        self.cfg = cfg
        lm_cfg = LMConfig(**cfg.lm)
        if cfg.encoder_dropout >= 0:
            lm_cfg = replace(lm_cfg, dropout=cfg.encoder_dropout)
        lm = CharLM(lm_cfg)
        self.embed, self.rnn = lm.embed, lm.rnn  # the LM's encoder: its names, so its weights load as they are
        self.drop_in, self.drop_h = nn.Dropout(lm_cfg.dropout), nn.Dropout(lm_cfg.dropout)
        h = lm_cfg.hidden
        self.score = nn.Linear(h, 1)
        self.head = nn.Sequential(
            nn.Dropout(cfg.dropout),
            nn.Linear(4 * h, cfg.head_hidden),
            nn.ReLU(),
            nn.Dropout(cfg.dropout / 2),
            nn.Linear(cfg.head_hidden, cfg.classes),
        )

    def from_lm(self, lm_state: dict) -> None:
        """Load a pre-trained ``CharLM``'s embedding and RNN (its output layer is not used)."""
        keep = {k: v for k, v in lm_state.items() if k.startswith(("embed.", "rnn."))}
        missing = [k for k in self.state_dict() if k.startswith(("embed.", "rnn.")) and k not in keep]
        if missing:
            raise ValueError(f"the language model lacks {missing[:3]}: not the same encoder")
        self.load_state_dict(keep, strict=False)

    def groups(self) -> list[list[nn.Parameter]]:
        """Parameter groups from the input up (embedding, each RNN layer, the head): for discriminative learning
        rates and gradual unfreezing."""
        layers = self.rnn.num_layers
        by_layer: list[list[nn.Parameter]] = [[] for _ in range(layers)]
        for name, p in self.rnn.named_parameters():
            by_layer[int(name.rsplit("_l", 1)[1].split("_")[0])].append(p)
        head = list(self.score.parameters()) + list(self.head.parameters())
        return [list(self.embed.parameters()), *by_layer, head]

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens int64 [B, T], lengths [B] -> logits [B, C], attention [B, T]."""
        T = tokens.shape[1]
        # The ONNX RNN ops take unsorted sequence_lens: the sort packing needs in torch stays out of the graph.
        sort = not torch.onnx.is_in_onnx_export()
        packed = pack_padded_sequence(
            self.drop_in(self.embed(tokens)), lengths.cpu(), batch_first=True, enforce_sorted=not sort
        )
        out, _ = self.rnn(packed)
        h, _ = pad_packed_sequence(out, batch_first=True, total_length=T)  # [B, T, H], zeros past each length
        h = self.drop_h(h)
        mask = torch.arange(T, device=tokens.device).unsqueeze(0) < lengths.unsqueeze(1)  # [B, T]
        m = mask.unsqueeze(-1).to(h.dtype)
        last = h.gather(1, (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, h.shape[2])).squeeze(1)
        biggest = h.masked_fill(~mask.unsqueeze(-1), -1e4).max(dim=1).values
        mean = (h * m).sum(1) / lengths.to(h.dtype).clamp(min=1).unsqueeze(1)
        scores = self.score(h).squeeze(-1).masked_fill(~mask, -1e9)
        att = torch.softmax(scores, dim=1) * mask.to(h.dtype)
        pooled = torch.cat([last, biggest, mean, (att.unsqueeze(-1) * h).sum(1)], dim=1)
        return self.head(pooled), att


class ExportGraph(nn.Module):
    """``(x float32 [B, T, 1], lengths int64 [B]) -> (probabilities [B, C], attention [B, T])``."""

    def __init__(self, model: TextClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, att = self.model(x[:, :, 0].round().long(), lengths)
        return torch.softmax(logits, dim=-1), att
