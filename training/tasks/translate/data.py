"""Sentence pairs for translation: the Ding German-English dictionary (Debian ``trans-de-en``) or a user's TSV.

The dictionary (``/usr/share/trans/de-en``, GPL-2+, data/trans-de-en/README.md) has one entry a line,
``German :: English``; each side is ``|``-separated groups that align by position (a headword, its plural, its
example sentences); a group lists alternatives separated by ``;`` and carries annotations in braces and
brackets (``{m}``, ``[ugs.]``). A group whose first alternatives are both sentences (>= 4 words each side,
ending in ``.``, ``!`` or ``?``, no ``/`` alternatives) is a **sentence pair** (~16k); every other aligned group
is a **phrase pair** (~370k: words, plurals, idioms), used for training only.

``split`` holds out a fixed, seeded share of the *sentence* pairs (a German sentence never sits on both sides),
so the test set measures sentences, not dictionary lookups.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from training.data import DataError  # a pair file that cannot be read: names the file and the line

DING = Path("/usr/share/trans/de-en")
ANNOTATION = re.compile(r"\s*(\{[^}]*\}|\[[^\]]*\])")
MIN_SENTENCE_WORDS = 4


@dataclass
class Pairs:
    source: list[str]
    target: list[str]

    def __len__(self) -> int:
        return len(self.source)

    def take(self, idx: list[int]) -> Pairs:
        return Pairs([self.source[i] for i in idx], [self.target[i] for i in idx])

    def __add__(self, other: Pairs) -> Pairs:
        return Pairs(self.source + other.source, self.target + other.target)


def alternatives(group: str) -> list[str]:
    """A group's ``;``-separated alternatives, not splitting inside parentheses; annotations removed."""
    group = ANNOTATION.sub("", group)
    out, depth, cur = [], 0, []
    for ch in group:
        depth += (ch == "(") - (ch == ")")
        if ch == ";" and depth <= 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur).strip())
    return [a for a in out if a]


def is_sentence(text: str) -> bool:
    return len(text.split()) >= MIN_SENTENCE_WORDS and text[-1] in ".!?" and "/" not in text


def read_ding(path: Path = DING) -> tuple[Pairs, Pairs]:
    """(sentence pairs, phrase pairs) from the dictionary, each de-duplicated in file order."""
    if not path.exists():
        raise DataError(f"{path}: not found (install the Debian package trans-de-en, or give --train pairs.tsv)")
    sentences: dict[tuple[str, str], None] = {}
    phrases: dict[tuple[str, str], None] = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or " :: " not in line:
                continue
            de, en = line.rstrip("\n").split(" :: ", 1)
            de_groups, en_groups = de.split(" | "), en.split(" | ")
            if len(de_groups) != len(en_groups):
                continue
            for d, e in zip(de_groups, en_groups):
                ds, es = alternatives(d), alternatives(e)
                if not ds or not es:
                    continue
                if is_sentence(ds[0]) and is_sentence(es[0]):
                    sentences[(ds[0], es[0])] = None
                elif "/" not in ds[0] + es[0] and not ds[0].endswith("...") and len(ds[0]) < 120:
                    phrases[(ds[0], es[0])] = None
    return _pairs(sentences), _pairs(phrases)


def _pairs(d: dict[tuple[str, str], None]) -> Pairs:
    return Pairs([s for s, _ in d], [t for _, t in d])


def read_tsv(path: Path) -> Pairs:
    """``source<TAB>target`` per line (UTF-8); blank lines skipped; an error names the file and the line."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    src, tgt = [], []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise DataError(f"{path}:{n}: expected source<TAB>target, found {len(parts)} field(s)")
        s, t = parts[0].strip(), parts[1].strip()
        if not s or not t:
            raise DataError(f"{path}:{n}: empty {'source' if not s else 'target'}")
        src.append(s)
        tgt.append(t)
    if not src:
        raise DataError(f"{path}: no pairs")
    return Pairs(src, tgt)


def split(pairs: Pairs, test: int, valid: int, seed: int) -> tuple[Pairs, Pairs, Pairs]:
    """(train, valid, test): a seeded shuffle of the distinct source sentences, so one source's pairs stay on
    one side; ``test`` and ``valid`` pairs at least (fewer only when the data is small: then a tenth each)."""
    by_source: dict[str, list[int]] = {}
    for i, s in enumerate(pairs.source):
        by_source.setdefault(s, []).append(i)
    keys = list(by_source)
    random.Random(seed).shuffle(keys)
    if len(pairs) < 5 * (test + valid):
        test = valid = max(1, len(pairs) // 10)
    parts: list[list[int]] = [[], [], []]  # test, valid, train
    for k in keys:
        part = 0 if len(parts[0]) < test else 1 if len(parts[1]) < valid else 2
        parts[part].extend(by_source[k])
    return pairs.take(parts[2]), pairs.take(parts[1]), pairs.take(parts[0])
