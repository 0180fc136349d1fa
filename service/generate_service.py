"""Entry of the language model: ``bentoml serve service.generate_service:SeqGenerate`` (Makefile, the Kubernetes
component, tests). The services live in their room, ``service/tasks/generate/app.py``."""

from service.tasks.generate.app import LMModel, SeqGenerate

__all__ = ["SeqGenerate", "LMModel"]
