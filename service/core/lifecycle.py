"""The model slot of a model service, and how it follows the promoted champion (issue 7/10).

Every model service holds what it serves in a ``ModelSlot``, replaced whole in one assignment, kept by a
``Follower`` (one per served model: the classifier's model repository has several, ``service.core.repository``;
the other tasks one, through ``FollowsChampion``). A follower polls its champion pointer
(``SEQSERVE_RELOAD_INTERVAL_S``); a new champion is loaded and checked aside (contract, reference outputs) and
swapped in between batches or steps; a broken one is refused (``seqserve_model_swap_failures_total``) and the
old model keeps serving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from service.core.artifact import Artifact, find_artifact
from service.core.metrics import MODEL_SWAP_FAILURES, MODEL_SWAPS
from service.core.settings import Settings
from service.core.store.champion import Champion, ChampionPointer

log = logging.getLogger("seqserve")


@dataclass(frozen=True)
class ModelSlot:
    """What a model service serves: replaced whole, in one assignment, at a swap."""

    engine: Any  # the task's engine (service.tasks.classify.engine.Engine, the generate room's LMEngine)
    metrics: Any  # its metrics (ServiceMetrics, GenerateMetrics): ``retire()`` at a swap
    source: str  # why this model is served (/metadata ``served_because``)

    @property
    def version(self) -> str:
        return self.engine.model_version


class Follower:
    """One model slot and the champion pointer it follows (``pointer``; None: a fixed model, never swapped).
    ``load(artifact, source)`` makes a slot (opens and checks the session); ``compatible(serving, artifact)``
    raises ValueError if the API workers' view of the contract would not fit ``artifact``. A model repository
    (``service.core.repository``) has one per entry; ``FollowsChampion`` one."""

    def __init__(
        self,
        task: str,
        pointer: str | None,
        load: Callable[[Artifact, str], ModelSlot],
        compatible: Callable[[ModelSlot, Artifact], None],
        settings: Settings,
        name: str = "",
    ) -> None:
        self.task, self.pointer_key, self.name = task, pointer, name
        self._load, self._compatible, self.settings = load, compatible, settings
        self._pointer: ChampionPointer | None = None
        self._refused: Champion | None = None
        self._swap_lock = threading.Lock()
        self.slot: ModelSlot

    def start(self, artifact: Artifact, source: str) -> None:
        """Load the first model; follow the pointer in a thread (``SEQSERVE_RELOAD_INTERVAL_S``)."""
        self.slot = self._load(artifact, source)
        log_loaded(self.slot, f"from {source}" + (f" as {self.name!r}" if self.name else ""))
        if self.pointer_key is not None and self.settings.reload_interval_s > 0:
            threading.Thread(target=self._follow, name=f"champion-{self.name or self.task}", daemon=True).start()

    def _follow(self) -> None:
        while True:
            time.sleep(self.settings.reload_interval_s)
            self.check_champion()

    def check_champion(self) -> str:
        """Swap to the champion if it is new (one check at a time); say what happened."""
        if self.pointer_key is None:
            return "not following a champion: a fixed model (SEQSERVE_MODEL or NAME=REF)"
        with self._swap_lock:
            champion = None
            try:
                if self._pointer is None:
                    self._pointer = ChampionPointer(self.settings.database, self.pointer_key)
                champion = self._pointer.get()
                if champion is None or champion.version == self.slot.version:
                    return "unchanged"
                if champion == self._refused:
                    return "refused before"
                self.swap(champion.ref, champion.version)
                return "swapped"
            except Exception as e:  # noqa: BLE001 - a bad promotion must never stop the serving model
                self._refused = champion  # not retried until the pointer moves again
                MODEL_SWAP_FAILURES.inc()
                log.warning(
                    "seqserve: promoted model %s%s refused, %s keeps serving: %s",
                    champion,
                    f" (as {self.name!r})" if self.name else "",
                    self.slot.version,
                    e,
                )
                return f"refused: {e}"

    def swap(self, ref: str, version: str | None = None) -> None:
        """Load ``ref``, check it, then make it the model in one assignment. Work already running finishes
        on the old model; the next batch (or new generation) runs on the new one."""
        artifact = find_artifact(ref)
        old = self.slot
        if version is not None and artifact.meta.model_version != version:
            raise ValueError(f"{ref} holds model {artifact.meta.model_version}, the pointer says {version}")
        if artifact.meta.task != self.task:
            raise ValueError(f"{ref} is a {artifact.meta.task} model; this service serves task {self.task}")
        self._compatible(old, artifact)
        new = self._load(artifact, "champion")
        self.slot = new  # the swap
        old.metrics.retire()
        MODEL_SWAPS.inc()
        log_loaded(new, f"champion, swapped in for {old.version}" + (f" as {self.name!r}" if self.name else ""))


class FollowsChampion:
    """A model service's one slot and its champion following (a ``Follower``). Subclasses give ``task``,
    ``_load`` and ``_check_compatible`` and call ``_start_slot`` from ``__init__``."""

    task = "classify"
    settings: Settings
    follower: Follower

    def _load(self, artifact: Artifact, source: str) -> ModelSlot:
        raise NotImplementedError

    def _check_compatible(self, artifact: Artifact) -> None:
        """Raise ValueError if the API workers' view of the contract would not fit ``artifact``."""
        raise NotImplementedError

    def _start_slot(self, artifact: Artifact, source: str, settings: Settings) -> None:
        self.settings = settings
        pointer = None if settings.model else self.task
        self.follower = Follower(self.task, pointer, self._load, lambda _, a: self._check_compatible(a), settings)
        self.follower.start(artifact, source)

    @property
    def slot(self) -> ModelSlot:
        return self.follower.slot

    def check_champion(self) -> str:
        return self.follower.check_champion()

    def swap(self, ref: str, version: str | None = None) -> None:
        self.follower.swap(ref, version)


def log_loaded(slot: ModelSlot, why: str) -> None:
    e, info = slot.engine, slot.engine.info
    log.info(
        "seqserve: model %s (%s, %s) on %s %s, %d ORT threads%s",
        e.model_version,
        e.artifact.source,
        why,
        info.provider,
        info.provider_options,
        e.ort_threads,
        f"; not on CUDA because {info.fallback_reason}" if info.fallback_reason else "",
    )
