"""Schema ids from a Confluent-compatible Schema Registry (a minimal in-process HTTP registry that
speaks the three endpoints the client uses), including register-on-startup and unknown ids."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from mystocks_gpu.infra.config import SchemaRegistryConfig
from mystocks_gpu.schemas import AvroCodec, SchemaError, SchemaStore, UnknownSchemaId, frame


class _Registry(BaseHTTPRequestHandler):
    subjects: dict[str, int] = {}
    schemas: dict[int, str] = {}
    auth: list[str] = []

    def _send(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802
        self.auth.append(self.headers.get("Authorization", ""))
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        parts = self.path.strip("/").split("/")
        subject = parts[1]
        if len(parts) == 2:  # look up
            sid = self.subjects.get(subject)
            return self._send(200, {"id": sid}) if sid else self._send(404, {"error_code": 40401})
        sid = 100 + len(self.schemas)  # register
        self.subjects[subject] = sid
        self.schemas[sid] = body["schema"]
        return self._send(200, {"id": sid})

    def do_GET(self) -> None:  # noqa: N802
        sid = int(self.path.rstrip("/").split("/")[-1])
        if sid in self.schemas:
            return self._send(200, {"schema": self.schemas[sid]})
        return self._send(404, {"error_code": 40403})

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def registry() -> Iterator[str]:
    _Registry.subjects, _Registry.schemas, _Registry.auth = {}, {}, []
    srv = HTTPServer(("127.0.0.1", 0), _Registry)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_unregistered_schemas_need_register_flag(registry: str) -> None:
    with pytest.raises(SchemaError, match="set schema_registry.register = true"):
        SchemaStore(SchemaRegistryConfig(url=registry))


def test_register_on_startup_then_ids_come_from_the_registry(registry: str) -> None:
    store = SchemaStore(SchemaRegistryConfig(url=registry, register=True, basic_auth_user="u", basic_auth_password="p"))
    tick = store.by_name("Tick")
    assert tick.id == _Registry.subjects["mystocks.md.Tick"] and tick.id >= 100
    assert all(a.startswith("Basic ") for a in _Registry.auth)
    # a second process finds the same ids without registering
    again = SchemaStore(SchemaRegistryConfig(url=registry))
    assert again.by_name("Tick").id == tick.id
    codec = AvroCodec(again)
    rec = {"symbol": "A", "ts_event": 1, "seq": 0, "kind": "TRADE", "price": 1.0, "size": 1.0, "side": 1,
           "bid": 1.0, "ask": 1.0, "bid_size": 1.0, "ask_size": 1.0}
    data = codec.encode("Tick", rec)
    assert int.from_bytes(data[1:5], "big") == tick.id and codec.decode(data) == rec
    with pytest.raises(UnknownSchemaId, match="unknown schema id 99999"):
        codec.decode(frame(99999, data[5:]))


def test_unreachable_registry_is_a_clear_error() -> None:
    with pytest.raises(SchemaError, match="unreachable"):
        SchemaStore(SchemaRegistryConfig(url="http://127.0.0.1:1", timeout_s=2))
