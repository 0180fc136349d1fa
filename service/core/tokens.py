"""Text <-> token ids for the token models (translate, textclf), the same code in training and in the service (no
torch here).

Two kinds, chosen at training time and shipped in the artifact:

* ``sentencepiece`` (the default): one joint subword vocabulary for both languages (a unigram model trained on
  the training pairs only), stored as ``tokenizer.model`` beside the graphs;
* ``chars``: one token per character, the vocabulary listed in the metadata.

Ids 0-3 are ``<pad>``, ``<unk>``, ``<s>``, ``</s>`` in both.
"""

from __future__ import annotations

from pathlib import Path

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]
KINDS = ("sentencepiece", "chars")


class Tokenizer:
    """``encode(text) -> ids`` (no ``<s>``/``</s>``), ``decode(ids) -> text`` (specials dropped)."""

    def __init__(self, kind: str, model_file: Path | None = None, chars: list[str] | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"tokenizer kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        if kind == "sentencepiece":
            import sentencepiece as spm

            if model_file is None or not Path(model_file).exists():
                raise FileNotFoundError(f"sentencepiece model not found: {model_file}")
            self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
            self.vocab_size = self.sp.get_piece_size()
            self.pieces = [self.sp.id_to_piece(i) for i in range(self.vocab_size)]
        else:
            if not chars:
                raise ValueError("a chars tokenizer needs its character list")
            self.pieces = SPECIALS + list(chars)
            self.index = {c: i for i, c in enumerate(self.pieces) if i >= len(SPECIALS)}
            self.vocab_size = len(self.pieces)

    def encode(self, text: str) -> list[int]:
        if self.kind == "sentencepiece":
            return self.sp.encode(text)
        return [self.index.get(c, UNK) for c in text]

    def decode(self, ids: list[int]) -> str:
        ids = [i for i in ids if i >= len(SPECIALS) or i == UNK]
        if self.kind == "sentencepiece":
            return self.sp.decode(ids)
        return "".join(self.pieces[i] if i != UNK else "\N{REPLACEMENT CHARACTER}" for i in ids)

    def piece(self, i: int) -> str:
        """How token ``i`` reads (for attention alignments): its text with the word-start mark shown as a space."""
        return self.pieces[i].replace("\u2581", " ") if 0 <= i < self.vocab_size else "<unk>"


def train_sentencepiece(texts: list[str], vocab_size: int, out: Path) -> Path:
    """A unigram sentencepiece model over ``texts`` (both languages), ids 0-3 as above; written to ``out``."""
    import io

    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        pad_id=PAD,
        unk_id=UNK,
        bos_id=BOS,
        eos_id=EOS,
        input_sentence_size=0,  # every line: the same model from the same texts
        num_threads=2,
        minloglevel=2,
        hard_vocab_limit=False,
    )
    out.write_bytes(buf.getvalue())
    return out


def char_inventory(texts: list[str], min_count: int = 2) -> list[str]:
    """The characters seen at least ``min_count`` times, most frequent first (ties by code point)."""
    counts: dict[str, int] = {}
    for t in texts:
        for c in t:
            counts[c] = counts.get(c, 0) + 1
    return sorted((c for c, n in counts.items() if n >= min_count), key=lambda c: (-counts[c], c))
