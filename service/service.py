"""Entry of the classifier: ``bentoml serve service.service:SeqServe`` (Makefile, Dockerfile, Kubernetes, KServe,
the bentofile). The services live in their room, ``service/tasks/classify/app.py``."""

from service.tasks.classify.app import SeqModel, SeqServe

__all__ = ["SeqServe", "SeqModel"]
