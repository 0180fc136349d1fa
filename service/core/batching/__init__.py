"""Batch serving: the internal hop, coalescing, padding plans, fixed call shapes."""
