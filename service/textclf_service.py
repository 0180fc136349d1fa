"""The text classifier's entry: ``bentoml serve service.textclf_service:SeqTextClf``; the services live in their
room, ``service/tasks/textclf/app.py``."""

from service.tasks.textclf.app import SeqTextClf, TextClfModel

__all__ = ["SeqTextClf", "TextClfModel"]
