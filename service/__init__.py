"""Serving side of seqserve: BentoML + ONNX Runtime + prometheus-client. Never imports torch."""
