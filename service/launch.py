"""``python -m service.launch ENTRY [bentoml serve options]``: serve ENTRY, or wait, unready, for its first model.

``bentoml serve`` needs a model when it starts (request types and limits come from the artifact), so a server
started before any champion is promoted (a fresh cluster) would exit, and on Kubernetes crash-loop. This launcher
(the images' entry point) looks first: with a model to serve (``SEQSERVE_MODEL``, or the task's champion in the
service database, present in the model store) it becomes ``bentoml serve ENTRY ...`` at once (``exec``: same
process, same signals). Without one it answers on the same host and port until one appears:

* ``/livez``, ``/healthz``: 200, the process is alive (liveness and startup probes pass);
* ``/readyz`` and every other route: 503 with the reason, ``{"error": {"code": "no_model", "message": ...}}``
  and ``retry-after`` (the pod stays out of the Service's endpoints);
* ``/metrics``: ``seqserve_waiting_for_model 1``;

and polls every ``SEQSERVE_RELOAD_INTERVAL_S`` (5 s; at least 1 s). When a model appears it closes its socket
and execs ``bentoml serve``, which loads it. SIGTERM while waiting exits 0. README "Putting the first model into a
cluster" gives the bootstrap.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from service.core.artifact import ENTRIES, ModelNotFound, find_artifact
from service.core.settings import Settings
from service.core.store.champion import served_ref

BENTOML_DEFAULT_HOST, BENTOML_DEFAULT_PORT = "0.0.0.0", 3000


def task_of_entry(entry: str) -> str:
    for task, known in ENTRIES.items():
        if known == entry:
            return task
    raise SystemExit(f"seqserve: unknown entry {entry!r}; one of {sorted(ENTRIES.values())}")


def option(argv: list[str], name: str, default: str) -> str:
    """``--name VALUE`` or ``--name=VALUE`` in the bentoml options, else ``default``."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return default


def why_no_model(task: str, settings: Settings) -> str | None:
    """None when there is a model to serve (each entry of ``SEQSERVE_MODELS``, when set), else the reason (what
    /readyz says)."""
    wanted = [("", settings.model, task)]  # (entry name, fixed ref, pointer followed)
    if settings.models:
        wanted = [(s.name, "" if s.follows(task) else s.ref, s.follows(task) or "") for s in settings.models]
    for name, fixed, pointer in wanted:
        try:
            ref, source = served_ref(fixed, settings.database, task=pointer)
        except ModelNotFound:
            if name and pointer != task:
                return (f"no model to serve yet for {name!r} (SEQSERVE_MODELS): promote one (python -m "
                        f"export.promote ARTIFACT --store --name {name}) and this server loads it")  # fmt: skip
            return (
                f"no model to serve yet: no {task} champion is promoted in the service database and SEQSERVE_MODEL "
                "is unset; promote one (python -m export.promote ARTIFACT --store) and this server loads it"
            )
        except Exception as e:  # noqa: BLE001 - the database is not reachable yet: wait for it as well
            return f"the service database is not reachable yet: {type(e).__name__}: {e}"
        try:
            find_artifact(ref)
        except Exception as e:  # noqa: BLE001 - promoted, but the model store does not hold it (yet)
            return f"the model named by {source} ({ref}) is not in the model store yet: {e}"
    return None


def waiting_server(host: str, port: int, task: str, reason: list[str]) -> ThreadingHTTPServer:
    class Waiting(BaseHTTPRequestHandler):
        def _send(self, status: int, body: bytes, content_type: str, retry: bool = False) -> None:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            if retry:
                self.send_header("retry-after", "30")
                self.send_header("x-seqserve-reason", "no_model")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _answer(self) -> None:
            path = self.path.split("?", 1)[0]
            if path in ("/livez", "/healthz"):
                body = json.dumps({"status": "alive, waiting for a model", "task": task, "reason": reason[0]})
                self._send(200, body.encode(), "application/json")
            elif path == "/metrics":
                text = (
                    "# HELP seqserve_waiting_for_model 1 while the server waits for its first model\n"
                    "# TYPE seqserve_waiting_for_model gauge\n"
                    f'seqserve_waiting_for_model{{task="{task}"}} 1\n'
                )
                self._send(200, text.encode(), "text/plain; version=0.0.4")
            else:
                error = {"code": "no_model", "message": reason[0], "field": None, "limit": None}
                self._send(503, json.dumps({"error": error}).encode(), "application/json", retry=True)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
            pass  # probes every few seconds: no line each

    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer((host, port), Waiting)
    server.daemon_threads = True
    return server


def bentoml_command(argv: list[str]) -> list[str]:
    script = shutil.which("bentoml") or os.path.join(os.path.dirname(sys.executable), "bentoml")
    head = [script] if os.path.exists(script) else [sys.executable, "-m", "bentoml"]
    return [*head, "serve", *argv]


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        raise SystemExit(f"usage: python -m service.launch ENTRY [bentoml serve options]; ENTRY one of {ENTRIES}")
    task = task_of_entry(argv[0])
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    settings = Settings()
    reason = [why_no_model(task, settings)]
    if reason[0] is not None:
        host = option(argv, "--host", BENTOML_DEFAULT_HOST)
        port = int(option(argv, "--port", os.environ.get("BENTOML_PORT", str(BENTOML_DEFAULT_PORT))))
        server = waiting_server(host, port, task, reason)
        threading.Thread(target=server.serve_forever, name="waiting", daemon=True).start()
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        print(f"seqserve: {task} on {host}:{port} waits, unready: {reason[0]}", file=sys.stderr, flush=True)
        interval = max(1.0, settings.reload_interval_s or 5.0)
        while reason[0] is not None:
            if stop.wait(interval):
                server.shutdown()
                sys.exit(0)
            reason[0] = why_no_model(task, settings)
        server.shutdown()
        server.server_close()  # the port is free for bentoml
        print(f"seqserve: a {task} model is there; starting bentoml serve", file=sys.stderr, flush=True)
        time.sleep(0.2)
    cmd = bentoml_command(argv)
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main()
