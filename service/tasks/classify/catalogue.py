"""The classifier's served models, as requests see them: each name's request limits (``request_limits``) and
``GET /metadata[?model=NAME&model_version=V]`` (``metadata_route``). The repository itself:
``service.core.repository``; the task-free routes: ``service.core.catalogue``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.core.app import model_info, refuse
from service.core.catalogue import resolve
from service.core.guard import Rejected
from service.core.repository import Repository
from service.core.settings import Settings

Limits = tuple[int, int, list[str]]  # feature_dim, max_length, classes


def request_limits(repo: Repository, settings: Settings) -> dict[str, Limits]:
    """Each served name's request contract, shared by its versions (a request is validated before its version
    is chosen): their feature_dim and classes must agree (else the start fails, naming them); the longest
    sequence is the shortest of their limits."""
    limits = {}
    for name, entries in repo.by_name.items():
        meta = entries[0].artifact.meta
        for e in entries[1:]:
            other = e.artifact.meta
            if (other.feature_dim, other.classes) != (meta.feature_dim, meta.classes):
                raise SystemExit(
                    f"seqserve: SEQSERVE_MODELS: the versions of {name!r} must take the same requests: "
                    f"{other.model_version} has feature_dim {other.feature_dim}, classes {other.classes}; "
                    f"{meta.model_version} {meta.feature_dim}, {meta.classes}"
                )
        max_length = min(settings.accepted_max_length(e.artifact.meta.max_length) for e in entries)
        limits[name] = (meta.feature_dim, max_length, meta.classes)
    return limits


def metadata_route(repo: Repository, limits: dict[str, Limits], max_sequences: int) -> Route:
    """``GET /metadata``: a served model's contract (default: the server's default model) and what the model
    service reports about its session."""

    async def metadata(request: Request) -> JSONResponse:
        unknown = sorted(set(request.query_params) - {"model", "model_version"})
        try:
            if unknown:
                raise Rejected(
                    f"{unknown[0]}: unknown query parameter (the parameters: model, model_version)", "unknown_field"
                )
            entry = await resolve(repo, request.query_params.get("model"), request.query_params.get("model_version"))
            info = await model_info(entry=entry.index)
        except Rejected as e:  # a name not served: 404; the model service is starting or gone: 503
            return refuse(e)
        meta = entry.artifact.meta
        return JSONResponse(
            {
                "task": meta.task,
                "model": entry.name,
                "model_name": meta.model_name,
                "model_version": info["model_version"],
                "classes": info["classes"],
                "feature_dim": meta.feature_dim,
                "max_length": limits[entry.name][1],
                "max_sequences": max_sequences,
                "training_length_range": meta.training_length_range,
                "normalisation": meta.normalisation.mode,
                **{k: v for k, v in info.items() if k not in ("model_version", "classes")},
                "rnn": meta.rnn,
                "training_metrics": {
                    k: meta.training_metrics.get(k) for k in ("test_accuracy", "test_macro_f1", "val_accuracy")
                },
            }
        )

    return Route("/metadata", metadata, methods=["GET"])
