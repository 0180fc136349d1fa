"""The Open Inference Protocol (KServe V2 REST) over a task's adapter: Triton and KServe clients work unchanged.

Routes (plain ASGI routes of a task's API service: BentoML cannot parse a V2 binary body):
``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``, ``GET /v2/models/{name}[/versions/{version}]``,
``.../ready``, ``POST .../infer``, ``POST /v2/repository/index``. The name is the artifact's ``model_name`` (or
its name in the server's model repository), the version the ``model_version`` being served; an unknown name or
version (the old one after a swap too) is a 404 ``{"error": ...}``.

This module is the codec and the routes; what the tensors mean is the task's ``V2Adapter``
(service/tasks/classify/v2.py): its model metadata, and ``infer``, which validates the input tensors, runs them
through the task's own batching path and returns the output tensors.

The binary tensor data extension (``tritonclient``'s default): the JSON header's size in the
``Inference-Header-Content-Length`` header, then each binary input's bytes (``binary_data_size``), decoded
straight into numpy; outputs asked for with ``binary_data`` (or ``binary_data_output`` for all) come back the
same way. BYTES elements are a 4-byte little-endian length and the bytes. A bad request is a 400 naming the
tensor and the limit (``V2Error``; ``reason`` labels the rejection metric).
"""

from __future__ import annotations

import importlib.metadata
import json
import struct
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.core.app import refuse
from service.core.guard import Rejected
from service.core.repository import find_version, no_version

HEADER = "inference-header-content-length"
DTYPES = {"FP32": np.dtype("<f4"), "INT64": np.dtype("<i8"), "INT32": np.dtype("<i4")}
Tensor = tuple[str, list[int], Any]  # (datatype, shape, values: an array, or a list of str for BYTES)


class V2Adapter(Protocol):
    """What a task gives the V2 routes."""

    model_name: str

    def metadata(self) -> dict:
        """``GET /v2/models/{name}``'s body but name and versions: platform, inputs, outputs, parameters."""

    async def version(self, ask: bool) -> str:
        """The model version served (``ask``: ask the model service now, not the API worker's last note of it).
        Raises ``Rejected`` (503) if the model service is not ready."""

    async def infer(self, request: dict, binaries: dict[str, memoryview]) -> tuple[str, dict[str, Tensor]]:
        """The request's input tensors through the task's batching path: (the version that answered, outputs)."""


class V2Error(Rejected):
    """A rejected V2 request: the message names the tensor and the limit; ``reason`` labels the metric."""

    def __init__(self, message: str, status: int = 400, reason: str = "bad_request") -> None:
        super().__init__(message, reason, status)


def tensor(spec: dict, binary: memoryview | None, datatype: str, name: str) -> np.ndarray:
    """One input tensor as a numpy array of its declared shape, from JSON ``data`` or its binary bytes."""
    if spec.get("datatype") != datatype:
        raise V2Error(
            f"input '{name}': datatype {spec.get('datatype')!r}, the model takes {datatype}", reason="datatype"
        )
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise V2Error(f"input '{name}': 'shape' must be a list of non-negative integers", reason="shape")
    count = int(np.prod(shape)) if shape else 1
    dtype = DTYPES[datatype]
    if binary is not None:
        if len(binary) != count * dtype.itemsize:
            raise V2Error(
                f"input '{name}': binary_data_size {len(binary)} bytes, shape {shape} needs {count * dtype.itemsize}",
                reason="binary_size",
            )
        return np.frombuffer(binary, dtype=dtype).reshape(shape)
    data = spec.get("data")
    if data is None:
        raise V2Error(f"input '{name}': no 'data' and no binary_data_size", reason="bad_input")
    try:
        arr = np.asarray(data, dtype=np.float64 if datatype == "FP32" else np.int64)
    except (ValueError, TypeError, OverflowError):
        raise V2Error(f"input '{name}': 'data' must be {datatype} numbers", reason="not_a_number") from None
    if arr.size != count:
        raise V2Error(f"input '{name}': {arr.size} values, shape {shape} needs {count}", reason="shape")
    if datatype == "FP32":
        with np.errstate(over="ignore"):
            arr = arr.astype(np.float32)
    return arr.reshape(shape)


def bytes_tensor(spec: dict, binary: memoryview | None, name: str) -> list[str]:
    """A BYTES input of shape ``[N]`` or ``[N, 1]`` as N strings (UTF-8), from JSON ``data`` (strings) or its
    binary bytes (each element a 4-byte little-endian length and the bytes, tritonclient's encoding)."""
    if spec.get("datatype") != "BYTES":
        raise V2Error(f"input '{name}': datatype {spec.get('datatype')!r}, the model takes BYTES", reason="datatype")
    shape = spec.get("shape")
    if not isinstance(shape, list) or len(shape) not in (1, 2) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise V2Error(f"input '{name}': shape {shape!r}, the model takes [N] or [N, 1]", reason="shape")
    if len(shape) == 2 and shape[1] != 1:
        raise V2Error(f"input '{name}': shape {shape}, the model takes [N] or [N, 1]", reason="shape")
    count = shape[0]
    if binary is not None:
        raw, out, at = bytes(binary), [], 0
        while at < len(raw):
            if at + 4 > len(raw):
                raise V2Error(f"input '{name}': binary data ends inside an element's length", reason="binary_size")
            (n,) = struct.unpack_from("<I", raw, at)
            if at + 4 + n > len(raw):
                raise V2Error(f"input '{name}': element {len(out)} runs past the binary data", reason="binary_size")
            out.append(raw[at + 4 : at + 4 + n])
            at += 4 + n
        values: list = out
    else:
        values = spec.get("data")
        if not isinstance(values, list):
            raise V2Error(f"input '{name}': no 'data' and no binary_data_size", reason="bad_input")
        if len(values) == count and all(isinstance(v, list) and len(v) == 1 for v in values):
            values = [v[0] for v in values]  # [N, 1] written nested
    if len(values) != count:
        raise V2Error(f"input '{name}': {len(values)} elements, shape {shape} needs {count}", reason="shape")
    texts = []
    for i, v in enumerate(values):
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                raise V2Error(f"input '{name}'[{i}]: not valid UTF-8", reason="bad_input") from None
        if not isinstance(v, str):
            raise V2Error(f"input '{name}'[{i}]: must be a string, got {type(v).__name__}", reason="bad_input")
        texts.append(v)
    return texts


def check_parameters(obj: dict, where: str) -> None:
    """``obj``'s ``parameters`` must be an object, or absent: a 400 naming ``where`` otherwise."""
    found = obj.get("parameters")
    if found is not None and not isinstance(found, dict):
        raise V2Error(f"{where}.parameters: must be an object, got {type(found).__name__}", reason="bad_input")


def parse_request(body: bytes, header_length: str | None) -> tuple[dict, dict[str, memoryview]]:
    """The JSON header and each binary input's bytes, by input name."""
    view = memoryview(body)
    if header_length is None:
        head, rest = view, view[len(view) :]
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise V2Error(f"{HEADER}: {header_length!r} is not a byte count", reason="binary_size") from None
        if not 0 < n <= len(view):
            raise V2Error(f"{HEADER}: {n}, but the body has {len(view)} bytes", reason="binary_size")
        head, rest = view[:n], view[n:]
    try:
        request = json.loads(bytes(head))
    except (ValueError, UnicodeDecodeError):
        raise V2Error("body: the inference request header is not valid JSON", reason="invalid_json") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise V2Error("body: expected an object with 'inputs' (a list of tensors)", reason="bad_input")
    check_parameters(request, "body")
    for i, spec in enumerate(request["inputs"]):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise V2Error(
                f"inputs[{i}]: must be an object with a string name (and shape, datatype, data)", reason="bad_input"
            )
        check_parameters(spec, f"inputs[{i}]")
    outputs = request.get("outputs")
    if outputs is not None and not isinstance(outputs, list):
        raise V2Error("outputs: must be a list of objects ({'name': ...})", reason="bad_output")
    for i, spec in enumerate(outputs or []):
        if not isinstance(spec, dict):
            raise V2Error(f"outputs[{i}]: must be an object ({{'name': ...}})", reason="bad_output")
        check_parameters(spec, f"outputs[{i}]")
    binaries, offset = {}, 0
    for spec in request["inputs"]:
        size = (spec.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(rest):
                raise V2Error(
                    f"input '{spec.get('name')}': binary_data_size {size} runs past the body's binary data",
                    reason="binary_size",
                )
            binaries[spec.get("name")] = rest[offset : offset + size]
            offset += size
    if offset != len(rest):
        raise V2Error(
            f"body: {len(rest) - offset} bytes of binary data that no input's binary_data_size accounts for",
            reason="binary_size",
        )
    return request, binaries


def encode(request: dict, model_name: str, version: str, tensors: dict[str, Tensor]) -> Response:
    """The V2 response: JSON, or a JSON header plus binary outputs where the request asked for them."""
    asked = request.get("outputs") or [{"name": name} for name in tensors]
    binary_default = bool((request.get("parameters") or {}).get("binary_data_output", False))
    outputs, chunks = [], []
    for spec in asked:
        name = spec.get("name") if isinstance(spec, dict) else None
        if name not in tensors:
            raise V2Error(
                f"outputs: {name!r} is not an output of the model ({', '.join(tensors)})", reason="bad_output"
            )
        datatype, shape, value = tensors[name]
        out: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if (spec.get("parameters") or {}).get("binary_data", binary_default):
            raw = (
                b"".join(struct.pack("<I", len(b)) + b for b in (s.encode() for s in value))
                if datatype == "BYTES"
                else value.tobytes()
            )
            out["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            out["data"] = value if datatype == "BYTES" else value.reshape(-1).tolist()
        outputs.append(out)
    body = {"model_name": model_name, "model_version": version, "outputs": outputs}
    if "id" in request:
        body["id"] = request["id"]
    head = json.dumps(body, separators=(",", ":")).encode()
    if not chunks:
        return Response(head, media_type="application/json")
    return Response(head + b"".join(chunks), media_type="application/octet-stream", headers={HEADER: str(len(head))})


def served(name: str, version: str | None, served: str) -> str:
    """``served``, unless the path asked for another version: a 404, also for a version swapped out."""
    if version is not None and version != served:
        raise V2Error(no_version(name, version, [served]), 404)
    return served


def v2_routes(adapters: V2Adapter | Sequence[V2Adapter]) -> list[Route]:
    """The V2 routes of a task's API service, over its adapter, or over one adapter per served model (a model
    repository, ``service.core.repository``: a name may have several, its versions; the first is the one a
    path without a version gets). ``POST /v2/repository/index`` lists them (Triton's repository extension)."""
    adapters = [adapters] if not isinstance(adapters, Sequence) else list(adapters)
    names = list(dict.fromkeys(a.model_name for a in adapters))

    async def pick(request: Request, ask: bool = True) -> tuple[V2Adapter, str]:
        """The adapter and version the path names; a 404 for a name or version not served."""
        name, version = request.path_params["name"], request.path_params.get("version")
        candidates = [a for a in adapters if a.model_name == name]
        if not candidates:
            raise V2Error(f"unknown model {name!r}; this server serves {', '.join(map(repr, names))}", 404)
        if version is None:
            return candidates[0], await candidates[0].version(ask)
        found, seen = await find_version(candidates, version, lambda a, fresh: a.version(fresh), ask_first=ask)
        if found is None:
            raise V2Error(no_version(name, version, seen), 404)
        return found, version

    async def server(request: Request) -> Response:
        version = importlib.metadata.version("seqserve")
        return JSONResponse({"name": "seqserve", "version": version, "extensions": ["binary_tensor_data"]})

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        try:
            for a in adapters:
                await a.version(ask=True)
        except Rejected as e:
            return refuse(e)
        return JSONResponse({"ready": True})

    async def model(request: Request) -> Response:
        try:
            adapter, version = await pick(request)
            same = (
                [adapter]
                if "version" in request.path_params
                else [a for a in adapters if a.model_name == adapter.model_name]
            )
            versions = [version if a is adapter else await a.version(True) for a in same]
        except Rejected as e:
            return refuse(e)
        return JSONResponse({"name": adapter.model_name, "versions": versions, **adapter.metadata()})

    async def model_ready(request: Request) -> Response:
        try:
            adapter, _ = await pick(request)
        except Rejected as e:
            return refuse(e)
        return JSONResponse({"name": adapter.model_name, "ready": True})

    async def infer(request: Request) -> Response:
        try:
            adapter, _ = await pick(request, ask=False)  # the hot path: the answer itself says which model gave it
            parsed, binaries = parse_request(await request.body(), request.headers.get(HEADER))
            version, tensors = await adapter.infer(parsed, binaries)
            served(adapter.model_name, request.path_params.get("version"), version)  # swapped meanwhile
            return encode(parsed, adapter.model_name, version, tensors)
        except Rejected as e:
            return refuse(e)

    async def index(request: Request) -> Response:
        """Every served model and version, READY or UNAVAILABLE with the reason."""
        out = []
        for a in adapters:
            try:
                out.append({"name": a.model_name, "version": await a.version(True), "state": "READY"})
            except Rejected as e:
                out.append({"name": a.model_name, "state": "UNAVAILABLE", "reason": str(e)})
        return JSONResponse(out)

    routes = [
        Route("/v2", server, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2/repository/index", index, methods=["POST"]),
    ]
    for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        routes += [
            Route(base, model, methods=["GET"]),
            Route(base + "/ready", model_ready, methods=["GET"]),
            Route(base + "/infer", infer, methods=["POST"]),
        ]
    return routes


def route_template(path: str) -> str | None:
    """``/v2/models/abc/versions/1/infer`` -> ``/v2/models/{name}/versions/{version}/infer``; None if not V2."""
    parts = path.split("/")
    if len(parts) < 4 or parts[1:3] != ["v2", "models"]:
        return None
    template = ["", "v2", "models", "{name}"]
    rest = parts[4:]
    if rest[:1] == ["versions"] and len(rest) >= 2:
        template += ["versions", "{version}"]
        rest = rest[2:]
    return "/".join(template + [r if r in ("ready", "infer") else "{other}" for r in rest[:1]])
