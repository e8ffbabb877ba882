"""Schema ids from a Confluent-compatible Schema Registry (the in-process registry of
``tests/registry_server.py``; why no real server runs here is said there), including
register-on-startup, id lookup, unknown ids, and the one store built from the settings."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from mystocks_gpu.infra.config import SchemaRegistryConfig, load_settings
from mystocks_gpu.schemas import (
    AvroCodec,
    SchemaError,
    SchemaStore,
    UnknownSchemaId,
    frame,
    schema_store,
)
from tests.registry_server import RegistryState, serve_registry

_Registry = RegistryState()


@pytest.fixture()
def registry() -> Iterator[str]:
    global _Registry
    with serve_registry() as (url, state):
        _Registry = state
        yield url


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


def test_settings_build_one_registry_store_and_processors_encode_with_its_ids(registry: str) -> None:
    from mystocks_gpu.processors.stream_processors import create
    from mystocks_gpu.schemas.schema_store import read_manifest
    from mystocks_gpu.schemas.symbols import SymbolTable

    s = load_settings(environ={"MYSTOCKS_SCHEMA_REGISTRY__URL": registry, "MYSTOCKS_SCHEMA_REGISTRY__REGISTER": "true"})
    store = schema_store(s)
    assert schema_store(s) is store  # one store per process and registry config
    manifest_ids = {e["name"]: e["id"] for e in read_manifest()["schemas"]}
    agg_id = _Registry.subjects["mystocks.streams.RunningAggregate"]
    assert store.by_name("RunningAggregate").id == agg_id != manifest_ids["mystocks.streams.RunningAggregate"]
    proc = create("aggregate", backend="cpu", store=store)
    symbols = SymbolTable()
    ticks = [{"symbol": "AAA", "ts_event": 10**18 + i, "seq": i, "kind": "TRADE", "price": 10.0 + i, "size": 1.0,
              "side": 1, "bid": 9.0, "ask": 11.0, "bid_size": 1.0, "ask_size": 1.0} for i in range(3)]
    codec = AvroCodec(store)
    values = [codec.encode("Tick", t) for t in ticks]
    assert int.from_bytes(values[0][1:5], "big") == store.by_name("Tick").id
    dec = proc.decode(values, np.arange(3), symbols, 0, 0)
    assert not dec.rejected  # ticks framed with registry ids are understood
    out, _ = proc.process(dec.columns, proc.initial_state())
    _, vals, _ = out.records["agg.running"]
    assert [int.from_bytes(v[1:5], "big") for v in vals] == [agg_id] * 3
    assert [codec.decode(v)["sum"] for v in vals] == [10.0, 21.0, 33.0]
    # a tick framed with the manifest's id is not one of the registry's: rejected, not misread
    manifest_tick = AvroCodec(SchemaStore()).encode("Tick", ticks[0])
    assert proc.decode([manifest_tick], np.arange(1), symbols, 0, 0).rejected[0].index == 0


def test_cli_run_with_an_unreachable_registry_is_a_one_line_error() -> None:
    from tests.conftest import run_cli

    r = run_cli("run", "aggregate", "--max-records", "1", "--idle-exit", "1",
                env={"MYSTOCKS_SCHEMA_REGISTRY__URL": "http://127.0.0.1:1", "MYSTOCKS_SCHEMA_REGISTRY__TIMEOUT_S": "2"})
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "schema registry at http://127.0.0.1:1 unreachable" in r.stderr
