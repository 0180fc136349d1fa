"""What a server with a model repository (``service.core.repository``) tells its clients, task-free: which entry
a request names (``resolve``), the ``model`` / ``model_version`` request fields (``model_field``,
``VersionField``) and ``GET /models`` (``models_route``). The classifier's API service uses them
(``service.tasks.classify.app``)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.core.app import model_info
from service.core.guard import Rejected
from service.core.repository import Entry, Repository, UnknownModel
from service.core.validate import fail

VersionField = Annotated[str | None, Field(description="one of the model's versions (default: the one it follows)")]


def model_field(repo: Repository) -> Any:
    """The ``model`` request field: a name ``repo`` serves (a 400 naming the field and the names otherwise);
    it is validated before the fields whose limits depend on it (declare it first)."""

    def served(name: str) -> str:
        if name not in repo.by_name:
            raise fail("unknown_model", f"model: {name!r} is not served here (the models: {', '.join(repo.names)})")
        return name

    return Annotated[str, AfterValidator(served), Field(description="a model this server serves (GET /models)")]


async def asked(entry: Entry) -> dict[str, Any]:
    """The model service's ``info()`` of ``entry``, whose note of the version it serves is brought up to date;
    ``Rejected`` (503) if the model service is not there."""
    info = await model_info(entry=entry.index)
    entry.version = info["model_version"]
    return info


async def resolve(repo: Repository, name: str | None, version: str | None) -> Entry:
    """The entry a request names; ``Rejected`` 404 for a name or version not served, 503 if the model
    service must be asked and is not there."""

    async def ask(e: Entry) -> str:
        return (await asked(e))["model_version"]

    try:
        return await repo.resolve(name, version, ask)
    except UnknownModel as e:
        raise Rejected(str(e), e.reason, 404) from None


def models_route(repo: Repository) -> Route:
    """``GET /models``: every model and version served, the default first, each READY (its version asked of the
    model service now) or UNAVAILABLE (with the reason); what it follows, whether it takes feedback."""

    async def models(request: Request) -> JSONResponse:
        out = []
        for e in repo.entries:
            row: dict[str, Any] = {"name": e.name, "default_version": e is repo.first(e.name)}
            try:
                info = await asked(e)
                row.update(model_version=e.version, state="READY", served_because=info["served_because"])
            except Rejected as err:
                row.update(model_version=e.version, state="UNAVAILABLE", reason=str(err))
            row.update(follows=e.pointer, feedback=e.feedback, source=e.source)
            out.append(row)
        return JSONResponse({"default": repo.default_name, "models": out})

    return Route("/models", models, methods=["GET"])
