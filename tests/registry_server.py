"""A minimal in-process Confluent-compatible Schema Registry (HTTP, the endpoints the client uses:
``POST /subjects/{s}`` lookup, ``POST /subjects/{s}/versions`` register, ``GET /schemas/ids/{id}``).

No real registry server can run on this machine: Karapace is not published on PyPI (the index
answers 404 for it), Confluent Schema Registry is not on Maven Central, and Apicurio's Maven
artifacts are un-built Quarkus modules without a runnable jar. Ids start at 100 so they never
collide with the manifest's, which lets tests tell which source an id came from.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FIRST_ID = 100


class RegistryState:
    """Subjects and schemas of one registry instance."""

    def __init__(self) -> None:
        self.subjects: dict[str, int] = {}
        self.schemas: dict[int, str] = {}
        self.auth: list[str] = []
        self.lock = threading.Lock()


def _handler(state: RegistryState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # noqa: N802
            state.auth.append(self.headers.get("Authorization", ""))
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            parts = self.path.strip("/").split("/")
            subject = parts[1]
            with state.lock:
                if len(parts) == 2:  # look up
                    sid = state.subjects.get(subject)
                    if sid is None:
                        return self._send(404, {"error_code": 40401, "message": f"Subject '{subject}' not found."})
                    return self._send(200, {"subject": subject, "id": sid, "version": 1, "schema": state.schemas[sid]})
                sid = state.subjects.get(subject) or FIRST_ID + len(state.schemas)  # register (idempotent)
                state.subjects[subject] = sid
                state.schemas[sid] = body["schema"]
            return self._send(200, {"id": sid})

        def do_GET(self) -> None:  # noqa: N802
            sid = int(self.path.rstrip("/").split("/")[-1])
            with state.lock:
                if sid in state.schemas:
                    return self._send(200, {"schema": state.schemas[sid]})
            return self._send(404, {"error_code": 40403, "message": "Schema not found"})

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def serve_registry() -> Iterator[tuple[str, RegistryState]]:
    """Run a registry on a free loopback port; yields ``(url, state)``."""
    state = RegistryState()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", state
    finally:
        srv.shutdown()
        srv.server_close()
