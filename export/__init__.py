"""torch -> ONNX export, parity gate, and the BentoML model store entry (the artifact contract)."""
