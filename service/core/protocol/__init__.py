"""Wire protocols over a task adapter: the Open Inference Protocol (V2)."""
