"""A model's token vocabulary (id -> text, special tokens) and the masks decoding needs, once per model.

Task-free: the generate room builds it from its ``generation`` section, a translator from its target side. The
section only has to list the tokens (``TokenTable``). Constraints (``service.tasks.generate.forms``) and the step
scheduler (``service.core.decoding.scheduler``) read it.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


class TokenTable(Protocol):
    vocab: list[str]  # token id -> text; specials first
    special_ids: dict[str, int]  # "unk", and "bos"/"eos" where the model has them


class ConstraintError(ValueError):
    """A constraint the model cannot satisfy; the message names the field."""


def is_free_char(c: str) -> bool:
    """A character a form's free position may take: not punctuation, space, control or a special token
    (the rule export used to find the forms)."""
    return len(c) == 1 and unicodedata.category(c)[0] not in "PZC"


@dataclass
class Vocabulary:
    """The model's tokens, and the masks the constraints need (made once per model). ``gen``: the task's
    section of metadata.json that lists them (``vocab``: token id -> text; ``special_ids``)."""

    gen: TokenTable
    index: dict[str, int] = field(init=False)
    writable: np.ndarray = field(init=False)  # what free generation may produce: all but <unk> and <bos>
    free_chars: np.ndarray = field(init=False)  # a form's free positions

    def __post_init__(self) -> None:
        vocab = self.gen.vocab
        self.index = {t: i for i, t in enumerate(vocab)}
        special = set(self.gen.special_ids.values())
        self.writable = np.ones(len(vocab), bool)
        for name in ("unk", "bos"):
            if name in self.gen.special_ids:
                self.writable[self.gen.special_ids[name]] = False
        self.free_chars = np.array([i not in special and is_free_char(t) for i, t in enumerate(vocab)])

    @property
    def eos(self) -> int | None:
        return self.gen.special_ids.get("eos")

    def token(self, char: str, field_name: str) -> int:
        if char not in self.index or self.index[char] in self.gen.special_ids.values():
            raise ConstraintError(f"{field_name}: {char!r} is not in the model's vocabulary")
        return self.index[char]

    def text(self, tokens: list[int]) -> str:
        """The text of ``tokens``, without ``<eos>``."""
        return "".join(self.gen.vocab[t] for t in tokens if t != self.eos)
