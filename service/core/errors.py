"""THE error body of every seqserve JSON route (issue 29): one shape, whatever refused the request.

```json
{"error": {"code": "too_long", "message": "sequences[0]: 250 time steps, the model accepts at most 200
 (max_length)", "field": "sequences[0]", "limit": 200}}
```

* ``code``: a stable, machine-readable reason (the same word the rejection counters use: ``too_long``,
  ``unknown_field``, ``missing_field``, ``invalid_json``, ``body_too_large``, ``busy``, ``no_model``, ...);
* ``message``: for people, naming the field and the limit;
* ``field``: the request field (or header) at fault, ``null`` when the request as a whole is;
* ``limit``: the number the field broke, ``null`` when there is none.

Every refusal is written as ``{"error": message}`` where it happens (``service.core.app.refuse``, the guard,
the admin routes) or by BentoML's validation (``{"error": ..., "detail": [pydantic errors]}``); ``normalise``
turns each into the shape above on the way out (``service.core.guard.RequestGuard``), so no pydantic internals
(``url``, ``input``, ``ctx``) reach a client. The V2 routes (``/v2/...``) keep the Open Inference Protocol's
``{"error": "message"}``, which Triton and KServe clients parse. Streams (``/generate``, ``/translate`` with
``stream``) report a failure after their 200 as an ``error`` event carrying ``{"error": message}``.
"""

from __future__ import annotations

import json
import re
from typing import Any

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "body_timeout",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "busy",
    500: "internal",
    503: "unavailable",
    504: "deadline_passed",
    507: "store_full",
}
PYDANTIC_CODES = {"json_invalid": "invalid_json", "missing": "missing_field", "extra_forbidden": "unknown_field"}
# "sequences[0][1]: ..." / "configuration.quantiles: ..." / "X-Request-Deadline-Ms: ...": the field, then ": "
FIELD = re.compile(r"^([A-Za-z_][\w\-]*(?:\[\d+\])*(?:\.[A-Za-z_][\w\-]*(?:\[\d+\])*)*): ")
# "at most 200 (max_length)", "within 30 s (SEQSERVE_BODY_TIMEOUT_S)", "expects 12 (feature_dim)"
LIMIT = re.compile(r"(?<![\w.])(\d[\d,]*(?:\.\d+)?)(?:\s*[A-Za-z%]{1,5})?\s*\(([A-Za-z][A-Za-z0-9_]*)\)")


def error_body(
    status: int, message: str, code: str | None = None, field: str | None = None, limit: float | None = None
) -> dict[str, Any]:
    """``{"error": {code, message, field, limit}}``; ``field`` and ``limit`` read from the message when not
    given (every refusal's message starts with its field and names its limit)."""
    if field is None:
        m = FIELD.match(message)
        field = m.group(1) if m else None
    if limit is None:
        m = LIMIT.search(message)
        if m:
            number = float(m.group(1).replace(",", ""))
            limit = int(number) if number.is_integer() else number
    return {"error": {"code": code or CODES.get(status, "error"), "message": message, "field": field, "limit": limit}}


def from_pydantic(errors: list[dict[str, Any]]) -> tuple[str, str, str | None]:
    """(code, message, field) of pydantic's first error (BentoML's ``detail``), without its internals."""
    first = errors[0]
    kind = str(first.get("type", ""))
    loc = ".".join(str(x) for x in first.get("loc", ())) or None
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    if kind.startswith("seqserve_"):  # ours (service.core.validate.fail): the message names field and limit
        message = str(first.get("msg", ""))
        m = FIELD.match(message)
        return kind[len("seqserve_") :], message + more, m.group(1) if m else loc
    code = PYDANTIC_CODES.get(kind, "bad_request")
    if code == "unknown_field":
        message = f"{loc}: unknown field, not part of this route's request (the fields: see /docs)"
    elif code == "missing_field":
        message = f"{loc}: required field missing"
    elif code == "invalid_json":
        message = f"body: not valid JSON ({first.get('msg', '')})"
        loc = "body"
    else:
        message = f"{loc}: {first.get('msg', 'invalid')}" if loc else str(first.get("msg", "invalid"))
    return code, message + more, loc


def normalise(status: int, body: bytes, reason: str | None) -> bytes | None:
    """The body in THE shape, or None when it already is (or is not an error body at all)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict) or "error" not in doc:
        return None
    error = doc["error"]
    if isinstance(error, dict) and "code" in error and "message" in error:
        return None
    detail = doc.get("detail")
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        code, message, field = from_pydantic(detail)
        return json.dumps(error_body(status, message, code, field)).encode()
    return json.dumps(error_body(status, str(error), reason)).encode()
