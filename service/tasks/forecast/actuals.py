"""``POST /actuals``: observed values sent back for retraining, kept durably as DeepAR-style JSON lines.

Each accepted series is one line of ``<SEQSERVE_DATA_DIR>/forecast/actuals.jsonl``: ``{"id", "start", "target",
"dynamic_feat", "model_version", "received_at"}`` (missing values as ``null``), written and ``fsync``ed before the
2xx, so an acknowledged series survives a crash. Retraining reads the file directly (``python -m training
forecast --data .seqserve/forecast/actuals.jsonl --frequency Q``: a later line with the same ``id`` replaces an
earlier one, so clients send each series' whole history again as it grows).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np

from service.core.store.files import append_synced


class ActualsStore:
    def __init__(self, data_dir: str) -> None:
        self.path = Path(data_dir) / "forecast" / "actuals.jsonl"
        self._lock = threading.Lock()

    def add(self, records: list[dict], version: str) -> int:
        """Append ``records`` (``id``, ``start``, ``target`` array, optional ``dynamic_feat``) and sync."""
        now = time.time()
        lines = []
        for r in records:
            target = [None if not np.isfinite(v) else float(v) for v in r["target"]]
            line = {"id": r["id"], "start": r["start"], "target": target, "model_version": version, "received_at": now}
            if r.get("dynamic_feat") is not None:
                line["dynamic_feat"] = r["dynamic_feat"]
            lines.append(json.dumps(line))
        with self._lock:
            append_synced(self.path, ("\n".join(lines) + "\n").encode("utf-8"))
        return len(lines)
