"""The model repository of a server: several models (and versions) behind one port, each addressed by name
(issue 29, item 7). The classifier's services serve one (``service.tasks.classify.app``).

``SEQSERVE_MODELS`` lists what a server serves, comma-separated; unset, it serves one model as always
(``SEQSERVE_MODEL``, else the task's champion) under the artifact's ``model_name``. Each entry is one of

* ``NAME``: the model promoted as NAME (``python -m export.promote REF --name NAME``; its own champion
  pointer, ``<task>/NAME``), followed and hot-swapped like the task's champion;
* ``NAME=@champion``: the task's own champion (the pointer ``make promote`` and retraining move) under NAME:
  the one entry whose ``/feedback`` is stored, because retraining improves that champion;
* ``NAME=REF``: a fixed model (a model store tag or an artifact directory), never swapped: an older version
  kept beside the champion, say.

The same NAME may appear more than once: its versions. A request names the model (``"model"`` in the JSON
routes, the path in the V2 routes ``/v2/models/{name}[/versions/{version}]``); without a version it gets the
name's followed entry (else its first); without a name, the first entry (the server's default). Entries of one
name share their request contract (features, classes): a request is validated before its version is chosen.

Each entry has its own slot and champion following in the model service (``service.core.lifecycle.Follower``),
its own adaptive batcher (a model service API per entry: ``infer``, ``infer_1``, ...), and the ``model`` label on
the metric families.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from service.core.artifact import Artifact

VARIABLE = "SEQSERVE_MODELS"
TASK_CHAMPION = "@champion"
MAX_ENTRIES = 16
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
T = TypeVar("T")


@dataclass(frozen=True)
class ModelSpec:
    """One entry of ``SEQSERVE_MODELS`` as written: a name and what it serves ("" follows the name's champion)."""

    name: str
    ref: str = ""

    def follows(self, task: str) -> str | None:
        """The champion pointer this entry follows (``task``'s own, or ``<task>/<name>``); None: a fixed model."""
        if self.ref == TASK_CHAMPION:
            return task
        return None if self.ref else pointer_key(task, self.name)


def parse_models(raw: str) -> tuple[ModelSpec, ...]:
    """``SEQSERVE_MODELS`` read; a bad value is a ``ValueError`` naming the variable and the entry."""
    specs: list[ModelSpec] = []
    for part in filter(None, (p.strip() for p in raw.split(","))):
        name, _, ref = (s.strip() for s in part.partition("="))
        if not NAME.match(name):
            raise ValueError(
                f"{VARIABLE}: {name!r} is not a model name (letters, digits, '_', '.', '-'; at most 64, "
                "starting with a letter or digit)"
            )
        if "=" in part and not ref:
            raise ValueError(f"{VARIABLE}: {part!r} names no model after '=' (NAME, NAME=REF or NAME=@champion)")
        spec = ModelSpec(name, ref)
        if spec in specs:
            raise ValueError(f"{VARIABLE}: {part!r} is listed twice")
        if not ref and ModelSpec(name, TASK_CHAMPION) in specs or ref == TASK_CHAMPION and ModelSpec(name) in specs:
            raise ValueError(f"{VARIABLE}: {name!r} follows two champions; give one of them another name")
        specs.append(spec)
    if len(specs) > MAX_ENTRIES:
        raise ValueError(f"{VARIABLE}: {len(specs)} entries, at most {MAX_ENTRIES} (MAX_ENTRIES)")
    if sum(s.ref == TASK_CHAMPION for s in specs) > 1:
        raise ValueError(f"{VARIABLE}: only one entry may serve the task's champion ({TASK_CHAMPION})")
    return tuple(specs)


def pointer_key(task: str, name: str) -> str:
    """The champion pointer a named model follows: ``<task>/<name>`` (the task's own is ``<task>``)."""
    return f"{task}/{name}"


@dataclass
class Entry:
    """One served model as the API workers see it: its name, the artifact it started with, the champion pointer
    it follows (None: fixed), whether it takes feedback, and the version it last answered with."""

    index: int  # its place in the repository: its model service API is ``api(index)``
    name: str
    artifact: Artifact
    source: str  # why this model: SEQSERVE_MODEL, SEQSERVE_MODELS, champion
    pointer: str | None
    feedback: bool
    version: str = field(init=False)

    def __post_init__(self) -> None:
        self.version = self.artifact.meta.model_version

    def api(self, base: str = "infer") -> str:
        """The model service API of this entry's own batcher."""
        return base if self.index == 0 else f"{base}_{self.index}"


class UnknownModel(LookupError):
    """A name or version this server does not serve (a 404; ``reason``: unknown_model or unknown_version)."""

    def __init__(self, message: str, reason: str = "unknown_model") -> None:
        super().__init__(message)
        self.reason = reason


class Repository:
    """The entries in order; name and version resolution. The first entry is the default model."""

    def __init__(self, entries: list[Entry]) -> None:
        self.entries = entries
        self.names = list(dict.fromkeys(e.name for e in entries))
        self.default_name = entries[0].name
        # per name: the followed entry first (the one a request without a version gets), then the fixed ones
        self.by_name = {
            n: sorted((e for e in entries if e.name == n), key=lambda e: e.pointer is None) for n in self.names
        }

    def __len__(self) -> int:
        return len(self.entries)

    def first(self, name: str | None) -> Entry:
        """The entry a request naming ``name`` (None: the default) and no version gets."""
        found = self.by_name.get(name or self.default_name)
        if not found:
            raise UnknownModel(f"model: {name!r} is not served here (the models: {', '.join(self.names)})")
        return found[0]

    async def resolve(self, name: str | None, version: str | None, ask: Callable[[Entry], Awaitable[str]]) -> Entry:
        """The entry serving ``name`` at ``version``: the API workers' notes first; asked (``ask``: the model
        service's version of an entry) when none matches, since a swap may have moved a followed one."""
        first = self.first(name)
        if version is None:
            return first

        async def current(e: Entry, fresh: bool) -> str:
            return await ask(e) if fresh and e.pointer is not None else e.version  # a fixed one never changes

        found, seen = await find_version(self.by_name[first.name], version, current)
        if found is None:
            raise UnknownModel("model_version: " + no_version(first.name, version, seen), "unknown_version")
        return found


async def find_version(
    candidates: Sequence[T], version: str, current: Callable[[T, bool], Awaitable[str]], ask_first: bool = False
) -> tuple[T | None, list[str]]:
    """The candidate serving ``version`` (None if none does) and the versions last seen: the API worker's notes
    first (``current(c, False)``), then the model service asked (``current(c, True)``), since a swap may have
    moved one; ``ask_first``: asked at once. The JSON routes (``Repository.resolve``) and the V2 routes
    (``service.core.protocol.v2``) both pick a version this way."""
    seen: list[str] = []
    for fresh in dict.fromkeys((ask_first, True)):
        seen = [await current(c, fresh) for c in candidates]
        if version in seen:
            return candidates[seen.index(version)], seen
    return None, seen


def no_version(name: str, version: str, serving: Sequence[str]) -> str:
    """The refusal of a version not served (a 404)."""
    return f"model {name!r} has no version {version!r}; serving {', '.join(map(repr, serving))}"
