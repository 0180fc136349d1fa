"""``POST /feedback`` of the text classifier: labelled texts sent back for retraining, kept durably.

Body: ``{"items": [{"text": "...", "label": "positive"}, ...]}``: at most ``max_texts`` items, each text within the
same limits as ``/classify-text``'s, each label one of the model's classes. Every accepted item is one line
``label<TAB>text`` (whitespace runs, tabs and newlines included, written as one space) of
``<SEQSERVE_DATA_DIR>/textclf/feedback.tsv``, written and ``fsync``ed before the 2xx, so an acknowledged item
survives a crash. The file holds at most ``SEQSERVE_FEEDBACK_MAX_ITEMS`` items (then a 507, nothing written).

It is the training file format itself: ``python -m training textclf --pretrained RUN --train movie --feedback
.seqserve/textclf/feedback.tsv`` adds its items to the training texts, a fixed share of them (by a hash of the
text) held out and scored apart (``training.tasks.textclf.data.read_feedback``).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.core.guard import Rejected
from service.core.store.files import append_synced
from service.tasks.textclf.schema import check_text, listed

FIELDS = ("items",)
ITEM_FIELDS = ("text", "label")
SPACES = re.compile(r"\s+")


@dataclass
class Item:
    text: str  # one line: whitespace runs as one space
    label: str


def parse_feedback(body: Any, classes: list[str], max_items: int, max_chars: int) -> list[Item]:
    """The request's items; a ``Rejected`` naming the field and the limit otherwise."""
    items = listed(body, "items", FIELDS, max_items, "{text, label} objects")
    out = []
    for k, item in enumerate(items):
        where = f"items[{k}]"
        if not isinstance(item, dict):
            raise Rejected(f"{where}: must be an object with text and label", "bad_request")
        extra = sorted(set(item) - set(ITEM_FIELDS))
        if extra:
            raise Rejected(f"{where}.{extra[0]}: unknown field (the fields: text, label)", "unknown_field")
        line = SPACES.sub(" ", check_text(f"{where}.text", item.get("text"), max_chars)).strip()
        label = item.get("label")
        if label not in classes:
            raise Rejected(f"{where}.label: {label!r} is not a class of this model (one of: {', '.join(classes)})",
                           "bad_label")  # fmt: skip
        out.append(Item(line, label))
    return out


class StoreFull(RuntimeError):
    """The file holds its maximum number of items."""


class FeedbackFile:
    """The append-only ``label<TAB>text`` file; ``add`` returns once the items are on disk."""

    def __init__(self, data_dir: str, max_items: int) -> None:
        self.path = Path(data_dir) / "textclf" / "feedback.tsv"
        self.max_items = max_items
        self._count: int | None = None  # counted at the first write
        self._lock = threading.Lock()

    def add(self, items: list[Item]) -> int:
        """Append ``items`` and sync; ``StoreFull`` (nothing written) past ``max_items``; an ``OSError`` as raised,
        with what it wrote cut off again."""
        text = "".join(f"{i.label}\t{i.text}\n" for i in items)
        with self._lock:
            if self._count is None:
                self._count = self._lines()
            if self._count + len(items) > self.max_items:
                raise StoreFull(f"the feedback file holds {self._count} items, at most {self.max_items}")
            append_synced(self.path, text.encode("utf-8"))
            self._count += len(items)
        return len(items)

    def _lines(self) -> int:
        if not self.path.exists():
            return 0
        with self.path.open("rb") as f:
            return sum(1 for _ in f)
