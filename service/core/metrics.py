"""The metric families every task shares (the task's own live in service/tasks' metrics modules); names kept."""

from __future__ import annotations

from prometheus_client import Counter

MODEL_SWAPS = Counter("seqserve_model_swaps", "Models swapped in after a promotion (load, check, swap)")
MODEL_SWAP_FAILURES = Counter("seqserve_model_swap_failures", "Promoted models refused; the old one kept serving")
