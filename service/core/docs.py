"""``GET /docs`` on every service: a self-hosted page of every route, and a ``/docs.json`` that lists them all.

BentoML's own UI (at ``/``) loads a tag-manager script from the internet; a service that only some of the
tasks documented, with the admin routes left out, is not a reference anyone can trust (issue 29). Here, for
every task's API service alike (installed with the guard, ``service.core.app.install_guard``):

* ``GET /docs``: one HTML page, everything inline, nothing fetched but ``/docs.json`` from the same server
  (its ``Content-Security-Policy`` forbids anything else): each route with its method, summary, parameters,
  request schema and answers. ``GET /`` redirects there.
* ``GET /docs.json``: the task's document (BentoML's, patched by the task's ``DocsPatch``) completed with every
  route the service really serves (``inventory``: its API methods and the routes of its mounted apps) that it
  left out; the admin routes with their bearer auth, the rest with the handler's docstring. Every error answer
  refers to the one error body (``service.core.errors``).
"""

from __future__ import annotations

import inspect
from typing import Any

from service.core.openapi import ADMIN_PATHS, ERROR, errors, patched_document

INFRA = {"/healthz": "liveness", "/livez": "liveness", "/readyz": "readiness", "/metrics": "Prometheus metrics"}
CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'"


def inventory(service: Any) -> dict[str, dict[str, str]]:
    """``{path: {method: summary}}`` of every route ``service`` (a BentoML service) answers."""
    routes: dict[str, dict[str, str]] = {p: {"get": s} for p, s in INFRA.items()}
    routes["/docs"] = {"get": "this reference (HTML)"}
    routes["/docs.json"] = {"get": "the OpenAPI document"}
    for api in service.apis.values():
        routes.setdefault(api.route, {})["post"] = first_line(api.func)
    for app, prefix, _ in getattr(service, "mount_apps", []):
        for route in getattr(app, "routes", []):
            path = prefix.rstrip("/") + getattr(route, "path", "")
            for method in sorted(getattr(route, "methods", None) or {"GET"}):
                if method != "HEAD":
                    routes.setdefault(path, {})[method.lower()] = first_line(getattr(route, "endpoint", None))
    return routes


def first_line(fn: Any) -> str:
    doc = inspect.getdoc(fn) if fn is not None else None
    return doc.strip().split("\n")[0].strip("`: ") if doc else ""


def complete(spec: dict[str, Any], routes: dict[str, dict[str, str]]) -> dict[str, Any]:
    """``spec`` with every route of ``routes`` it lacks, and THE error body as a component."""
    paths = spec.setdefault("paths", {})
    spec.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR
    for path, methods in routes.items():
        for method, summary in methods.items():
            if method in paths.get(path, {}):
                continue
            op = ADMIN_PATHS.get(path, {}).get(method)
            if op is None:
                infra = path in INFRA or path.startswith("/docs")
                answers = {"200": {"description": "OK"}}
                if not infra:
                    answers.update(errors({"400": "a bad request (the field and the limit named)"}))
                tag = "Infrastructure" if infra else "Service APIs"
                op = {"summary": summary or f"{method.upper()} {path}", "tags": [tag], "responses": answers}
            paths.setdefault(path, {})[method] = op
    paths["/docs"] = {"get": {"summary": "This reference: every route, self-hosted (HTML)", "tags": ["Infrastructure"],
                              "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}}}}  # fmt: skip
    return spec


class DocsSite:
    """ASGI middleware: ``GET /docs`` (the page), ``GET /`` (a redirect to it), ``/docs.json`` completed."""

    def __init__(self, app: Any, routes: dict[str, dict[str, str]], title: str) -> None:
        self.app, self.routes, self.title = app, routes, title

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path") if scope["type"] == "http" else None
        if path == "/docs" and scope["method"] in ("GET", "HEAD"):
            body = PAGE.replace("{{TITLE}}", self.title).encode()
            headers = [(b"content-type", b"text/html; charset=utf-8"), (b"content-security-policy", CSP.encode()),
                       (b"content-length", str(len(body)).encode())]  # fmt: skip
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body if scope["method"] == "GET" else b""})
            return
        if path == "/" and scope["method"] in ("GET", "HEAD"):
            headers = [(b"location", b"/docs"), (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 307, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        if path != "/docs.json":
            await self.app(scope, receive, send)
            return
        await patched_document(self.app, scope, receive, send, lambda spec: complete(spec, self.routes))


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{TITLE}}: API reference</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:15px/1.45 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
h1{font-size:1.5rem}h2{font-size:1.1rem;margin:1.6rem 0 .4rem;border-bottom:1px solid #ddd}
.op{margin:.6rem 0 1rem;padding:.5rem .8rem;border-left:4px solid #89a;background:#f7f8fa}
.m{display:inline-block;min-width:4rem;font:bold 13px monospace;text-transform:uppercase}
code,pre{font:13px/1.35 ui-monospace,monospace}pre{background:#fff;border:1px solid #e3e3e3;padding:.5rem;
overflow:auto;max-height:22rem}details{margin:.3rem 0}.r{color:#555}
</style></head><body>
<h1>{{TITLE}}</h1><p id="info">Loading <a href="/docs.json">/docs.json</a> ...</p><div id="routes"></div>
<script>
"use strict";
const el = (tag, text, cls) => { const e = document.createElement(tag); if (text) e.textContent = text;
  if (cls) e.className = cls; return e; };
const pretty = (x) => JSON.stringify(x, null, 2);
function resolve(spec, s) {
  if (s && s.$ref) { return s.$ref.split("/").slice(1).reduce((o, k) => (o || {})[k], spec); }
  return s;
}
fetch("/docs.json").then((r) => r.json()).then((spec) => {
  const info = spec.info || {};
  document.getElementById("info").textContent = (info.description || "") + (info.version ? " (version " +
    info.version + ")" : "");
  const groups = {};
  for (const [path, ops] of Object.entries(spec.paths || {}).sort()) {
    for (const [method, op] of Object.entries(ops)) {
      const tag = (op.tags || ["Other"])[0];
      (groups[tag] = groups[tag] || []).push([path, method, op]);
    }
  }
  const root = document.getElementById("routes");
  for (const [tag, ops] of Object.entries(groups)) {
    root.appendChild(el("h2", tag));
    for (const [path, method, op] of ops) {
      const box = el("div", null, "op");
      const head = el("div");
      head.appendChild(el("span", method, "m"));
      head.appendChild(el("code", path));
      box.appendChild(head);
      if (op.summary) box.appendChild(el("div", op.summary));
      if (op.description) box.appendChild(el("div", op.description, "r"));
      if (op.security) box.appendChild(el("div", "needs Authorization: Bearer <SEQSERVE_ADMIN_TOKEN>", "r"));
      if (op.parameters && op.parameters.length) {
        box.appendChild(el("div", "parameters: " + op.parameters.map((p) => p.name + " (" + p.in + ")").join(", "),
          "r"));
      }
      const body = op.requestBody && op.requestBody.content;
      if (body) {
        for (const [kind, c] of Object.entries(body)) {
          const d = el("details"); d.appendChild(el("summary", "request body (" + kind + ")"));
          d.appendChild(el("pre", pretty(resolve(spec, c.schema) || {}))); box.appendChild(d);
        }
      }
      const answers = el("details"); answers.appendChild(el("summary", "answers"));
      for (const [code, resp] of Object.entries(op.responses || {})) {
        answers.appendChild(el("div", code + ": " + (resp.description || "")));
      }
      box.appendChild(answers);
      root.appendChild(box);
    }
  }
  const err = el("details");
  err.appendChild(el("summary", "the error body of every route (V2 routes: {\\"error\\": message})"));
  err.appendChild(el("pre", pretty((spec.components || {}).schemas ? spec.components.schemas.Error : {})));
  root.appendChild(err);
}).catch((e) => { document.getElementById("info").textContent = "could not read /docs.json: " + e; });
</script></body></html>
"""
