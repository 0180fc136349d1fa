"""The translator: a bidirectional GRU/LSTM encoder and an attention decoder with input feeding (Luong et al. 2015).

One class, read top to bottom:

* **encode**: subword ids -> embedding -> a bidirectional RNN over the packed batch (each sentence's backward
  direction starts at its own last token: exact under padding) -> ``memory`` ``[B, S, H]``; the decoder's first
  state is ``tanh(bridge(...))`` of the top layer's last forward and backward states; ``keys`` are the memory
  projected once for the attention (not again at every step).
* **step**: one target token per row: the RNN reads the token's embedding and the previous attentional vector
  (input feeding), attends over the memory (``bahdanau``: additive, ``v . tanh(W q + U m)`` (Bahdanau et al.
  2015); ``luong``: general, ``q . W m``), and ``tanh(W_c [context; h])`` is the attentional vector that scores
  the vocabulary and feeds the next step. Padding is masked (its weight is exactly 0).
* **forward**: teacher forcing, ``step`` over the target; the loss is label-smoothed cross-entropy, over the whole
  vocabulary or (training's default) over a sampled set of candidate tokens (``loss``'s ``candidates``).

Source, target and output share one embedding (a joint subword vocabulary; Press & Wolf 2017).

``EncoderGraph`` and ``StepGraph`` are what export puts into ONNX (two graphs; the service runs the encoder once
per request and the step graph once per decoding step for every live beam of every request).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

RNN_TYPES = {"lstm": nn.LSTM, "gru": nn.GRU}
ATTENTIONS = ("bahdanau", "luong")
NEG = -1e9  # attention score of a padded position


@dataclass
class S2SConfig:
    vocab_size: int
    pad: int
    bos: int
    eos: int
    rnn: str = "gru"
    attention: str = "bahdanau"
    embedding: int = 256
    hidden: int = 256  # the decoder's; each encoder direction has half
    enc_layers: int = 2
    dec_layers: int = 1
    dropout: float = 0.2

    def to_dict(self) -> dict:
        return asdict(self)


class Seq2Seq(nn.Module):
    def __init__(self, cfg: S2SConfig) -> None:
        super().__init__()
        if cfg.rnn not in RNN_TYPES:
            raise ValueError(f"rnn must be one of {sorted(RNN_TYPES)}, got {cfg.rnn!r}")
        if cfg.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {cfg.attention!r}")
        if cfg.hidden % 2:
            raise ValueError(f"hidden must be even (two encoder directions of hidden / 2), got {cfg.hidden}")
        self.cfg = cfg
        h, e, rnn = cfg.hidden, cfg.embedding, RNN_TYPES[cfg.rnn]
        self.embed = nn.Embedding(cfg.vocab_size, e, padding_idx=cfg.pad)
        enc_drop = cfg.dropout if cfg.enc_layers > 1 else 0.0
        self.encoder = rnn(e, h // 2, cfg.enc_layers, batch_first=True, bidirectional=True, dropout=enc_drop)
        self.bridge = nn.Linear(h, cfg.dec_layers * h)
        dec_drop = cfg.dropout if cfg.dec_layers > 1 else 0.0
        self.decoder = rnn(e + h, h, cfg.dec_layers, batch_first=True, dropout=dec_drop)
        if cfg.attention == "bahdanau":
            self.key = nn.Linear(h, h, bias=False)
            self.query = nn.Linear(h, h)
            self.score = nn.Linear(h, 1, bias=False)
        else:
            self.key = nn.Linear(h, h, bias=False)  # general: q . (W m), W applied once to the memory
        self.combine = nn.Linear(2 * h, h, bias=False)
        self.out = nn.Linear(h, e)  # to the embedding width, then scored against the shared embedding
        self.out_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.drop = nn.Dropout(cfg.dropout)
        nn.init.normal_(self.embed.weight, 0.0, e**-0.5)
        with torch.no_grad():
            self.embed.weight[cfg.pad].zero_()

    # -- encoder --------------------------------------------------------------------------------------------------
    def encode(self, src: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``src`` ``[B, S]`` (padded with ``pad``), ``lengths`` ``[B]`` -> (memory ``[B, S, H]``, keys
        ``[B, S, H]``, mask ``[B, S]`` (1.0 real, 0.0 padding), the decoder's first state: h (, c for an LSTM)
        ``[dec_layers, B, H]``)."""
        cfg = self.cfg
        sort = not torch.onnx.is_in_onnx_export()  # ONNX RNNs take unsorted lengths; torch packing sorts
        packed = pack_padded_sequence(
            self.drop(self.embed(src)), lengths.cpu(), batch_first=True, enforce_sorted=not sort
        )
        out, last = self.encoder(packed)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])
        hn = last[0] if cfg.rnn == "lstm" else last
        top = torch.cat([hn[-2], hn[-1]], -1)  # the top layer's forward (at each row's end) and backward states
        h0 = torch.tanh(self.bridge(top)).view(-1, cfg.dec_layers, cfg.hidden).transpose(0, 1).contiguous()
        steps = torch.arange(src.shape[1], device=src.device).unsqueeze(0)
        mask = (steps < lengths.unsqueeze(1)).float()
        state = (h0, torch.zeros_like(h0)) if cfg.rnn == "lstm" else (h0,)
        return (memory, self.key(memory), mask, *state)

    # -- one decoding step ----------------------------------------------------------------------------------------
    def step(
        self,
        token: torch.Tensor,
        state: tuple[torch.Tensor, ...],
        feed: torch.Tensor,
        memory: torch.Tensor,
        keys: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor]:
        """``token`` ``[B]``, ``state`` (h[, c]) ``[dec_layers, B, H]``, ``feed`` ``[B, H]`` -> (the new feed, the
        attentional vector ``[B, H]`` that ``logits`` scores; the new state; attention ``[B, S]``)."""
        x = torch.cat([self.drop(self.embed(token)), feed], -1).unsqueeze(1)
        out, new = self.decoder(x, state if self.cfg.rnn == "lstm" else state[0])
        new = new if isinstance(new, tuple) else (new,)
        q = out[:, 0]
        if self.cfg.attention == "bahdanau":
            scores = self.score(torch.tanh(keys + self.query(q).unsqueeze(1))).squeeze(-1)
        else:
            scores = torch.bmm(keys, q.unsqueeze(-1)).squeeze(-1)
        scores = scores.masked_fill(mask == 0, NEG)
        attn = torch.softmax(scores, -1) * mask  # padding exactly 0
        context = torch.bmm(attn.unsqueeze(1), memory).squeeze(1)
        feed = torch.tanh(self.combine(torch.cat([context, q], -1)))
        return feed, new, attn

    def logits(self, feed: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Attentional vectors ``[..., H]`` -> vocabulary scores ``[..., V]`` (the shared embedding), or the scores
        of the tokens ``ids`` only."""
        h = self.out(self.drop(feed))
        if ids is None:
            return F.linear(h, self.embed.weight, self.out_bias)
        return F.linear(h, self.embed.weight[ids], self.out_bias[ids])

    def features(self, src: torch.Tensor, lengths: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: ``tgt_in`` ``[B, T]`` (``bos`` then the target) -> attentional vectors ``[B, T, H]``."""
        memory, keys, mask, *state = self.encode(src, lengths)
        feed = memory.new_zeros(src.shape[0], self.cfg.hidden)
        st = tuple(state)
        feeds = []
        for t in range(tgt_in.shape[1]):
            feed, st, _ = self.step(tgt_in[:, t], st, feed, memory, keys, mask)
            feeds.append(feed)
        return torch.stack(feeds, 1)

    def forward(self, src: torch.Tensor, lengths: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing -> logits ``[B, T, V]`` (one product for every step: the costly part, done once)."""
        return self.logits(self.features(src, lengths, tgt_in))

    def loss(
        self,
        src: torch.Tensor,
        lengths: torch.Tensor,
        tgt_in: torch.Tensor,
        tgt_out: torch.Tensor,
        smoothing: float,
        candidates: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean label-smoothed cross-entropy over real target tokens, their count). With ``candidates``
        (``ids`` sorted, containing every token of ``tgt_out`` and ``pad``; ``log_q``, the log-probability that
        each was drawn) the softmax runs over those tokens only, their logits less ``log_q`` (sampled softmax,
        Jean et al. 2015; Bengio & Senecal 2008): the vocabulary-sized product is the step's costliest part."""
        real = tgt_out != self.cfg.pad
        if candidates is None:
            logits, target, ignore = self(src, lengths, tgt_in), tgt_out, self.cfg.pad
        else:
            ids, log_q = candidates
            logits = self.logits(self.features(src, lengths, tgt_in), ids) - log_q
            target = torch.searchsorted(ids, tgt_out.contiguous())
            ignore = int(torch.searchsorted(ids, torch.tensor(self.cfg.pad)))
        ce = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=ignore, label_smoothing=smoothing)
        return ce, real.sum()


class EncoderGraph(nn.Module):
    """``(src [B, S], lengths [B]) -> (memory, keys, mask, h[, c])`` for export."""

    def __init__(self, model: Seq2Seq) -> None:
        super().__init__()
        self.model = model

    def forward(self, src: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.model.encode(src, lengths)


class StepGraph(nn.Module):
    """``(token [B], feed [B, H], memory, keys, mask, h[, c]) -> (log_probs [B, V], feed, attention [B, S],
    h[, c])`` for export."""

    def __init__(self, model: Seq2Seq) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        token: torch.Tensor,
        feed: torch.Tensor,
        memory: torch.Tensor,
        keys: torch.Tensor,
        mask: torch.Tensor,
        *state: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        feed, new, attn = self.model.step(token, state, feed, memory, keys, mask)
        return (F.log_softmax(self.model.logits(feed), -1), feed, attn, *new)
