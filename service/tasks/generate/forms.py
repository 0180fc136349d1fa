"""Constrained generation: which tokens may come at each output position, applied as masks on the
log-probabilities inside the batched step (``service.core.decoding.scheduler``).

A ``Constraint`` is a list over positions of the document being written (the prompt's characters first, then
the generated ones): ``None`` (any character the model may write), a token id (fixed), or a boolean mask over
the vocabulary (allowed set); with ``end=True`` the document must end (``<eos>``) right after the last position.

* **Presets** are stored in the artifact (``generation.forms``, made by
  ``training.tasks.generate.export.form_presets``): for a corpus of one document a line, its commonest shapes,
  e.g. the Tang poem forms ``5x4``, ``5x8``, ``7x4``, ``7x8`` (line length x lines: punctuation exactly where the
  form puts it, characters everywhere else).
* **Acrostic** (藏头诗): a preset plus characters, each line starting with the next one.
* **General**: ``{"fixed": {"3": "a"}, "allowed": {"4": "abc"}}`` over positions of the generated text.

The vocabulary and its masks: ``service.core.vocab``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.core.vocab import ConstraintError, Vocabulary, is_free_char

Position = int | np.ndarray | None


def fits(text: str, template: list) -> bool:
    """Does ``text`` (a whole document) have a form's shape: its literals in place, free characters elsewhere?"""
    return len(text) == len(template) and all(
        (c == t) if t is not None else is_free_char(c) for c, t in zip(text, template)
    )


@dataclass
class Constraint:
    positions: list[Position]
    end: bool = False  # the document ends right after the last position

    def mask(self, row: np.ndarray, position: int, vocab: Vocabulary) -> None:
        """Forbid (``-inf``) in ``row`` what may not come at ``position`` (0 = the document's first character)."""
        if position < len(self.positions):
            rule = self.positions[position]
        elif self.end and vocab.eos is not None:
            rule = vocab.eos
        else:
            rule = None
        if rule is None:
            row[~vocab.writable] = -np.inf
        elif isinstance(rule, int):
            keep = row[rule]
            row[:] = -np.inf
            row[rule] = keep
        else:
            row[~rule] = -np.inf

    def check_prompt(self, prompt: str, vocab: Vocabulary) -> None:
        for i, c in enumerate(prompt):
            rule = self.positions[i] if i < len(self.positions) else (vocab.eos if self.end else None)
            t = vocab.index.get(c, -1)
            if rule is not None and (t < 0 or (t != rule if isinstance(rule, int) else not rule[t])):
                raise ConstraintError(f"prompt: character {i} ({c!r}) does not fit the constraint")

    def __len__(self) -> int:
        return len(self.positions)


def from_form(name: str, vocab: Vocabulary, acrostic: str = "") -> Constraint:
    forms = vocab.gen.forms
    if name not in forms:
        raise ConstraintError(f"form: {name!r} is not one of this model's forms {sorted(forms)}")
    template = forms[name]["template"]
    positions: list[Position] = [vocab.free_chars if t is None else vocab.token(t, "form") for t in template]
    starts = [0] + [i + 1 for i, t in enumerate(template[:-1]) if t is not None]  # each line's first position
    if len(acrostic) > len(starts):
        raise ConstraintError(f"acrostic: {len(acrostic)} characters, form {name!r} has {len(starts)} lines")
    for line, c in enumerate(acrostic):
        t = vocab.token(c, "acrostic")
        if not vocab.free_chars[t]:
            raise ConstraintError(f"acrostic: {c!r} is not a character the form allows at a line's start")
        positions[starts[line]] = t
    return Constraint(positions, end=vocab.eos is not None)


def from_request(spec: dict, vocab: Vocabulary, offset: int, max_new_tokens: int) -> Constraint:
    """``{"fixed": {"i": "c"}, "allowed": {"i": "chars"}}`` over generated positions (after ``offset``)."""
    unknown = set(spec) - {"fixed", "allowed"}
    if unknown:
        raise ConstraintError(f"constraint: unknown field {sorted(unknown)[0]!r} (fixed, allowed)")
    rules: dict[int, Position] = {}
    for kind in ("fixed", "allowed"):
        for key, chars in (spec.get(kind) or {}).items():
            where = f"constraint.{kind}.{key}"
            try:
                i = int(key)
            except ValueError:
                raise ConstraintError(f"{where}: the key must be a position (0-based integer)") from None
            if not 0 <= i < max_new_tokens:
                raise ConstraintError(f"{where}: position must be 0..{max_new_tokens - 1} (max_new_tokens)")
            if not isinstance(chars, str) or not chars or (kind == "fixed" and len(chars) != 1):
                raise ConstraintError(f"{where}: expected {'one character' if kind == 'fixed' else 'characters'}")
            if kind == "fixed":
                rules[i] = vocab.token(chars, where)
            else:
                allowed = np.zeros(len(vocab.gen.vocab), bool)
                allowed[[vocab.token(c, where) for c in chars]] = True
                rules[i] = allowed
    n = max(rules, default=-1) + 1
    return Constraint([None] * offset + [rules.get(i) for i in range(n)])
