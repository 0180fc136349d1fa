"""The model slot of a model service, and how it follows the promoted champion (issue 7/10).

Both model services (``service.service.SeqModel``, the classifier; ``service.generate_service.LMModel``, the
language model) hold what they serve in one ``ModelSlot``, replaced whole in one assignment. ``FollowsChampion``
polls the champion pointer of the service's task (``SEQSERVE_RELOAD_INTERVAL_S``); a new champion is loaded and
checked aside (contract, reference outputs) and swapped in between batches or steps; a broken one is refused
(``seqserve_model_swap_failures_total``) and the old model keeps serving.
"""

from __future__ import annotations

import logging
import threading
import time
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


class FollowsChampion:
    """A model service's slot and its champion following. Subclasses give ``task``, ``_load`` and
    ``_check_compatible`` and call ``_start_slot`` from ``__init__``."""

    task = "classify"
    settings: Settings
    slot: ModelSlot

    def _load(self, artifact: Artifact, source: str) -> ModelSlot:
        raise NotImplementedError

    def _check_compatible(self, artifact: Artifact) -> None:
        """Raise ValueError if the API workers' view of the contract would not fit ``artifact``."""
        raise NotImplementedError

    def _start_slot(self, artifact: Artifact, source: str, settings: Settings) -> None:
        self.settings = settings
        self.slot = self._load(artifact, source)
        self._pointer: ChampionPointer | None = None
        self._refused: Champion | None = None
        self._swap_lock = threading.Lock()
        log_loaded(self.slot, f"from {source}")
        if settings.model == "" and settings.reload_interval_s > 0:
            threading.Thread(target=self._follow_champion, name="champion", daemon=True).start()

    def _follow_champion(self) -> None:
        while True:
            time.sleep(self.settings.reload_interval_s)
            self.check_champion()

    def check_champion(self) -> str:
        """Swap to the champion if it is new (one check at a time); say what happened."""
        if self.settings.model:
            return "not following the champion: SEQSERVE_MODEL names the model"
        with self._swap_lock:
            champion = None
            try:
                if self._pointer is None:
                    self._pointer = ChampionPointer(self.settings.database, self.task)
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
                log.warning("seqserve: promoted model %s refused, %s keeps serving: %s", champion, self.slot.version, e)
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
        self._check_compatible(artifact)
        new = self._load(artifact, "champion")
        self.slot = new  # the swap
        old.metrics.retire()
        MODEL_SWAPS.inc()
        log_loaded(new, f"champion, swapped in for {old.version}")


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
