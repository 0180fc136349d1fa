"""Entry of the translator: ``bentoml serve service.translate_service:SeqTranslate`` (Makefile, the Kubernetes
component, tests). The services live in their room, ``service/tasks/translate/app.py``."""

from service.tasks.translate.app import SeqTranslate, TranslatorModel

__all__ = ["SeqTranslate", "TranslatorModel"]
